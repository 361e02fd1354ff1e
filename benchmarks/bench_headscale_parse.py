"""How long the Headscale plugin takes to parse a node list and compare it with the last round.

Answers of 1,000 and 10,000 nodes are built to the published spec (tests/support/fake_headscale.py),
every node online and tagged (the worst case: all become candidates). Reported, median of several
runs: ``json.loads`` of the bytes, the plugin's parse + selection in the steady state (same list
as last round: what every poll costs) and cold (a fresh selector: the first round).

Run from the repository root: ``python benchmarks/bench_headscale_parse.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from exo_discovery_core import Address, NodeInfo
from exo_discovery_core.identity import Identity
from exo_discovery_headscale.api import parse_node_list
from exo_discovery_headscale.config import HeadscaleConfig
from exo_discovery_headscale.plugin import Selector
from tests.support.fake_headscale import FakeNode, list_answer

RUNS = 9


def median_ms(work: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    config = HeadscaleConfig(api_url="https://headscale.example")
    node = NodeInfo(
        Identity.generate().peer_id, "bench", 52417, (Address(host="127.0.0.1", port=52417),)
    )
    own = frozenset({"100.64.0.1"})
    print(
        f"{'version':8} {'nodes':>6} {'MB':>5} {'json.loads':>11} {'parse+compare':>14} "
        f"{'ratio':>6} {'cold':>8}"
    )
    for version in ("0.27.1", "0.29.2"):
        for count in (1_000, 10_000):
            nodes = [
                FakeNode.numbered(i, tags=("tag:exo", "tag:exo-port-52417"))
                for i in range(1, count + 1)
            ]
            body = json.dumps(list_answer(version, nodes)).encode()
            selector = Selector(config, node)
            first = selector.select(parse_node_list(body), own)
            assert len(first) == count - 1

            def steady(
                selector: Selector = selector, body: bytes = body, first: object = first
            ) -> None:
                peers = selector.select(parse_node_list(body), own)
                assert peers == first  # what the core's poll does with the result

            def cold(body: bytes = body) -> None:
                Selector(config, node).select(parse_node_list(body), own)

            def loads(body: bytes = body) -> None:
                json.loads(body)

            base = median_ms(loads)
            ours = median_ms(steady)
            print(
                f"{version:8} {count:>6} {len(body) / 1e6:>5.1f} {base:>9.1f}ms "
                f"{ours:>12.1f}ms {ours / base:>6.2f} {median_ms(cold, 3):>6.1f}ms"
            )


if __name__ == "__main__":
    main()
