"""A real DNS server (dnsmasq) inside a lab's network namespace, with the records a test gives.

dnsmasq answers only from its command line here (``--no-resolv --no-hosts``, no config file),
listens only on the lab host's address, and is stopped by the lab with the rest of its
processes. Records change by :meth:`DnsServer.serve` (a restart: dnsmasq does not reload SRV
records on SIGHUP). A host that should use it gets it in ``/etc/netns/<ns>/resolv.conf``, which
``ip netns exec`` mounts over ``/etc/resolv.conf`` for that namespace's processes only.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Host, NetnsLab


def dnsmasq_binary() -> str | None:
    return shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").is_file() else None
    )


@dataclass
class DnsServer:
    lab: NetnsLab
    host: Host
    proc: subprocess.Popen[str] | None = None
    records: list[str] = field(default_factory=list)

    def serve(self, *, srv: Sequence[str] = (), hosts: Sequence[str] = ()) -> None:
        """(Re)start with these records: ``srv`` as dnsmasq's ``--srv-host`` values
        (``_svc._tcp.domain,target,port,priority,weight``), ``hosts`` as ``--host-record``
        values (``name,ip``)."""
        self.stop()
        binary = dnsmasq_binary()
        assert binary is not None
        argv = [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--bind-interfaces", f"--listen-address={self.host.ipv4}", "--port=53",
            "--pid-file=", "--user=root", "--log-facility=-", "--cache-size=0",
            *(f"--srv-host={r}" for r in srv), *(f"--host-record={h}" for h in hosts),
        ]  # fmt: skip
        self.records = [*srv, *hosts]
        self.proc = self.lab.popen(
            self.host, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends when dnsmasq exits (a bad argument)
            if "started, version" in line:
                return
        raise RuntimeError(f"dnsmasq did not start: exit {self.proc.wait()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


@contextmanager
def resolver_for(host: Host, server: DnsServer) -> Iterator[None]:
    """``host``'s processes ask ``server`` (its own resolv.conf, removed afterwards)."""
    etc = Path("/etc/netns") / host.netns
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "resolv.conf").write_text(f"nameserver {server.host.ipv4}\noptions timeout:1\n")
        yield
    finally:
        shutil.rmtree(etc, ignore_errors=True)
