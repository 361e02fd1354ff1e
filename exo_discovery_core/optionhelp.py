"""Options: a config field's declaration (``option(...)``: key, flag, env var, default, help) and
the one help text rendered from it for every place that shows it: ``--help``, ``doctor`` and an
idle plugin's "how to configure me" (go-discover's ``Help()``). A plugin never writes that text by
hand, so it cannot drift from the declaration. This module imports no other of the core's, so
the models and the config layer can both use it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def option(
    default: Any = ...,
    *,
    help: str,
    flag: str | None = None,
    env: str | None = None,
    secret: bool = False,
    needed: bool = False,
    **field_kwargs: Any,
) -> Any:
    """A config field that may also be set by ``env`` and ``flag``.

    ``secret=True`` also accepts ``<key>_file`` in the file and ``<ENV>_FILE`` in the environment
    (the value is the file's content); declare such fields as ``SecretStr`` so they never print.
    ``needed=True`` marks what a user must set for the plugin to run: an idle plugin's message
    and ``doctor`` name these options (with their flag and env var), so no plugin writes that text.
    An empty env var or flag value counts as unset.
    """
    extra: dict[str, Any] = {
        "exo_flag": flag,
        "exo_env": env,
        "exo_secret": secret,
        "exo_needed": needed,
    }
    return Field(default, description=help, json_schema_extra=extra, **field_kwargs)


def option_meta(info: FieldInfo) -> tuple[str | None, str | None, bool]:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flag, env, secret = extra.get("exo_flag"), extra.get("exo_env"), extra.get("exo_secret")
    return (
        flag if isinstance(flag, str) else None,
        env if isinstance(env, str) else None,
        bool(secret),
    )


@dataclass(frozen=True)
class OptionHelp:
    """One option: its key in its table, its flag and env var, its default and what it does."""

    table: str
    key: str
    flag: str | None
    env: str | None
    secret: bool
    needed: bool
    info: FieldInfo = field(repr=False, compare=False)
    help: str = ""

    @property
    def default(self) -> str | None:
        """Worked out when asked: a default made by a factory (the state dir, from platformdirs)
        is not computed for every command line that is built."""
        return _default_text(self.info)

    @property
    def where(self) -> str:
        """Every way to set it: ``[plugins.x] key, --flag, env VAR`` (and the ``_file`` forms)."""
        key = f"{self.table} {self.key}" + (f" or {self.key}_file" if self.secret else "")
        ways = [key]
        if self.flag:
            ways.append(self.flag)
        if self.env:
            ways.append(f"env {self.env}" + (f" or {self.env}_FILE" if self.secret else ""))
        return ", ".join(ways)

    @property
    def line(self) -> str:
        """``key (where it is set): what it does`` — the form of idle messages and fixes."""
        return f"{self.key} ({self.where}): {self.help}"

    @property
    def flag_help(self) -> str:
        """The ``--help`` text of its flag: what it does, the other ways to set it, the default."""
        other = f"{self.table.strip('[]')}.{self.key}" + (f"; env {self.env}" if self.env else "")
        default = f"; default: {self.default}" if self.default is not None else ""
        return f"{self.help} [{other}{default}]"


def _default_text(info: FieldInfo) -> str | None:
    """The default as a user would write it; None when there is nothing worth showing."""
    value: Any = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return None
    if isinstance(value, SecretStr):
        return "(secret)"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(map(str, value)) if value else "none"
    if value == "":
        return '""'
    return str(value)


def option_helps(model: type[BaseModel], table: str) -> list[OptionHelp]:
    """Every field of ``model`` (the ``table`` it is read from, e.g. ``[plugins.mdns]``)."""
    helps = []
    for key, info in model.model_fields.items():
        flag, env, secret = option_meta(info)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        helps.append(
            OptionHelp(
                table=table,
                key=key,
                flag=flag,
                env=env,
                secret=secret,
                needed=bool(extra.get("exo_needed")),
                info=info,
                help=info.description or "",
            )
        )
    return helps


def how_to_set(model: type[BaseModel], table: str, keys: Iterable[str] = ()) -> str:
    """How to set ``keys`` of ``model`` (by default the ``needed`` ones, else all that have a
    flag or env var): ``set key (where): help | key (where): help``; "" for a model without any."""
    helps = option_helps(model, table)
    wanted = list(keys)
    if wanted:
        unknown = set(wanted) - {h.key for h in helps}
        if unknown:
            raise KeyError(f"{model.__name__} has no option {', '.join(sorted(unknown))}")
        chosen = [h for key in wanted for h in helps if h.key == key]
    else:
        chosen = [h for h in helps if h.needed] or [h for h in helps if h.flag or h.env]
    if not chosen:
        return ""
    return "set " + " | ".join(h.line for h in chosen)
