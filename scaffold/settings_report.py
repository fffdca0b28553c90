"""``gz settings`` and ``gz run --print-settings``: every effective setting and where it came from.

A value comes from the environment (the variable is named), from code (the service's
``settings_class`` changes gz's default), from a ``gz run`` option, or is gz's default.
Secrets (tokens, passwords) are never shown.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping

from pydantic import BaseModel
from pydantic.fields import FieldInfo

import gz
from gz.durations import format_duration, parse_duration
from gz.variables import unknown_variables, variable

from .endpoints import client_settings
from .errors import BadInput

_SECRET = re.compile(r"token|password|passwd|secret|credential", re.IGNORECASE)


def report(
    settings_class: type[gz.ServerSettings] = gz.ServerSettings,
    service: str = "",
    options: Mapping[str, tuple[str, object]] | None = None,
) -> list[str]:
    """The lines: the server settings of ``settings_class`` (``service`` names it), then the
    client settings, then GZ_* variables gz ignores. ``options`` maps fields to the command-line
    option that set them and its value (``{"listen": ("--listen", "127.0.0.1:9000")}``)."""
    options = options or {}
    try:
        server = settings_class.from_env(**{field: value for field, (_, value) in options.items()})
    except gz.SettingsError as error:
        raise BadInput(str(error)) from None
    code = f"code ({settings_class.__qualname__})"
    title = f"server settings ({service})" if service else "server settings"
    lines = [f"{title}:", *_rows(server, code, options)]
    lines += ["client settings:", *_rows(client_settings(), "code", {})]
    ignored = unknown_variables()
    if ignored:
        lines.append("ignored (not gz variables):")
        lines += [
            f"  {name}" + (f"  did you mean {close}?" if close else "")
            for name, close in sorted(ignored.items())
        ]
    return lines


def _rows(settings: BaseModel, code: str, options: Mapping[str, tuple[str, object]]) -> list[str]:
    model = type(settings)
    environ = {name.upper(): name for name in os.environ}  # settings read names in any case
    rows = []
    for field in sorted(model.model_fields):
        name = variable(model, field)
        if field in options:
            source = options[field][0]
        elif name in environ:
            source = f"environment {environ[name]}"
        elif _default(model, field) != _gz_default(model, field):
            source = code
        else:
            source = "default"
        value = getattr(settings, field)
        if value and _SECRET.search(field):
            shown = "***"
        elif isinstance(value, float) and _is_duration(model.model_fields[field]):
            shown = format_duration(value)
        else:
            shown = _format(value)
        rows.append((name, shown, source))
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(shown) for _, shown, _ in rows)
    return [f"  {name:<{width}}  {shown:<{value_width}}  {source}" for name, shown, source in rows]


def _default(model: type[BaseModel], field: str) -> object:
    return model.model_fields[field].get_default(call_default_factory=True)


def _gz_default(model: type[BaseModel], field: str) -> object:
    """The default of gz's own model for ``field``; a field a service adds has its own."""
    for base in model.__mro__:
        if base.__module__ == gz.ServerSettings.__module__ and field in base.model_fields:
            return _default(base, field)
    return _default(model, field)


def _is_duration(info: FieldInfo) -> bool:
    """A Duration (or Duration | None) field: shown as 500ms or 10s, not seconds."""
    annotations = [info.annotation, *typing.get_args(info.annotation)]
    metadata = [*info.metadata, *(m for a in annotations for m in getattr(a, "__metadata__", ()))]
    return any(getattr(item, "func", None) is parse_duration for item in metadata)


def _format(value: object) -> str:
    """As the value would be written in its variable."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):  # GZ_METRICS_BUCKETS is a tuple
        return ",".join(map(str, value)) or '""'
    if isinstance(value, dict):
        return ",".join(f"{key}={_format(item)}" for key, item in value.items()) or '""'
    return str(value) or '""'
