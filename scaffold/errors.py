"""The errors gz commands raise; gz prints each as one ``gz: ...`` line (cli.OneLineErrors)."""

from __future__ import annotations

import click


class BadInput(click.ClickException):
    """Exit 2 with one line saying what is wrong and what to do instead."""

    exit_code = 2


class Failed(click.ClickException):
    """Exit 1 with one line: the input was fine, the world was not (a call failed, a check)."""

    exit_code = 1
