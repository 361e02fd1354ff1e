"""The node's and the plugins' options as command-line flags of ``run`` and ``doctor``.

Each field declared with a ``flag`` becomes a click option whose help is the option's one help
text (:mod:`.optionhelp`: what it does, its key and env var, its default); ``--help`` lists them
in one section per owner (the node, then each plugin), so a user sees which plugin a flag is of.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence

import click
from pydantic import BaseModel

from .optionhelp import OptionHelp, option_helps


class OwnedOption(click.Option):
    """A flag made from an ``option`` declaration; ``owner`` is ``node`` or the plugin's name.

    Its help text (``helped``'s) is made when ``--help`` shows it: building the command line of
    ``run`` then works out no default (the state dir's comes from platformdirs)."""

    def __init__(
        self, *args: object, owner: str, helped: OptionHelp | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.owner = owner
        self._helped = helped

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self._helped is not None:
            self.help, self._helped = self._helped.flag_help, None
        return super().get_help_record(ctx)


class GroupedCommand(click.Command):
    """A command whose ``--help`` shows its own options, then one section per flag owner."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            owner = param.owner if isinstance(param, OwnedOption) else ""
            sections.setdefault(owner, []).append(record)
        for owner, records in sections.items():
            with formatter.section(_title(owner)):
                formatter.write_dl(records)


def _title(owner: str) -> str:
    if not owner:
        return "Options"
    if owner == "node":
        return "Node options ([node])"
    return f"Plugin {owner} ([plugins.{owner}])"


def table_of(owner: str) -> str:
    return "[node]" if owner == "node" else f"[plugins.{owner}]"


def flag_options(models: Sequence[tuple[str, type[BaseModel]]]) -> list[click.Option]:
    """One flag per field with a ``flag``, for each ``(owner, model)``."""
    options: list[click.Option] = []
    for owner, model in models:
        for helped in option_helps(model, table_of(owner)):
            flag = helped.flag
            if not flag:
                continue
            name = flag.lstrip("-").replace("-", "_")
            if model.model_fields[helped.key].annotation is bool:
                negative = "--no-" + flag.removeprefix("--")
                options.append(
                    OwnedOption(
                        [f"{flag}/{negative}", name],
                        default=None,
                        helped=helped,
                        owner=owner,
                    )
                )
            else:
                table = typing.get_origin(model.model_fields[helped.key].annotation) is dict
                options.append(
                    OwnedOption(
                        [flag, name],
                        default=None,
                        helped=helped,
                        metavar="KEY=VALUE" if table else "VALUE",
                        multiple=table,  # a table (--meta): KEY=VALUE, repeatable
                        owner=owner,
                    )
                )
    return options
