"""Jinja2 templates shipped in scaffold/templates (package data)."""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2  # only gz new and the envoy modes of gz kube render: keep gz start-up light

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("gz.scaffold", "templates"),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, never an empty string
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters["snake"] = snake_case
    environment.filters["toml"] = toml_string
    return environment


def snake_case(name: str) -> str:
    """SayHello -> say_hello, HTTPServer -> http_server (for generated test names)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def toml_string(text: str) -> str:
    """A quoted TOML basic string: JSON's escapes are TOML's, and TOML escapes DEL too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_macro(template: str, macro: str, *args: Any) -> str:
    """One macro of ``template``: a piece that a template also renders, e.g. a stub handler."""
    return str(getattr(environment().get_template(template).module, macro)(*args))
