"""The GZ_* variables gz knows, and a warning about the others.

Settings ignore variables they do not know, so a typo in a name (GZ_METRIC_PORT, GZ_TIMOUT)
would silently leave a setting at its default: servers at start-up and the first connect() of a
process log one warning per unknown variable instead, with the known name it is closest to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from .settings import _GzSettings

log = logging.getLogger("gz.settings")

DYNAMIC = "GZ_TARGET_"  # GZ_TARGET_<NAME>: one per logical service (docs/targets.md)
_reported: set[str] = set()  # warned about already in this process
_checked = False


def variable(model: type[_GzSettings], field: str) -> str:
    """The variable a settings field is read from: ``listen`` -> GZ_LISTEN."""
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def known_variables() -> set[str]:
    """The variables of every settings model defined so far, including the fields a service's
    own ``settings_class`` adds."""
    known: set[str] = set()
    models: list[type[_GzSettings]] = [_GzSettings]
    while models:
        model = models.pop()
        models += model.__subclasses__()
        known.update(variable(model, field) for field in model.model_fields)
    return known


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Each GZ_* variable in ``environ`` (default: the process's) that gz does not read, with
    the known name closest to it, if any. Names count in any case, as the settings read them."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    unknown: dict[str, str | None] = {}
    for name in environ:
        upper = name.upper()
        if not upper.startswith("GZ_") or upper in known:
            continue
        if upper.startswith(DYNAMIC) and len(upper) > len(DYNAMIC):
            continue
        import difflib  # only when a name is unknown: it costs import gz a millisecond

        close = difflib.get_close_matches(upper, [*known, f"{DYNAMIC}<NAME>"], n=1)
        unknown[name] = close[0] if close else None
    return unknown


def warn_unknown_variables(*, once: bool = False) -> None:
    """Log one warning per unknown GZ_* variable, each at most once per process. With ``once``
    (connect(), called often) nothing happens after the first check of the process."""
    global _checked
    if once and _checked:
        return
    _checked = True
    for name, close in unknown_variables().items():
        if name in _reported:
            continue
        _reported.add(name)
        hint = f"did you mean {close}?" if close else "docs/configuration.md lists them"
        log.warning("%s is not a gz variable and is ignored; %s", name, hint)
