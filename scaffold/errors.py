"""The one error every gz command raises for bad input: exit 2 with one ``gz: ...`` line."""

from __future__ import annotations

import click


class BadInput(click.ClickException):
    """Exit 2 with one line saying what is wrong and what to do instead."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"gz: {self.format_message()}", err=True)


class Failed(click.ClickException):
    """Exit 1 with one line: the input was fine, the world was not (a call failed, a check)."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"gz: {self.format_message()}", err=True)
