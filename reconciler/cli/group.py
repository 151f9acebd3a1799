"""The root command group: usage errors exit 1, and each command's module is imported only when
that command runs.

`reconcile --help` (and shell completion) must not pay for pydantic, httpx, rich, sqlite and the
engine, so the group knows its commands from a table of names, modules and one-line summaries, as
click's documentation on lazily loading subcommands suggests; `tests/test_cli_lazy.py` checks the
table against the commands themselves.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from gettext import gettext as _
from typing import TYPE_CHECKING, Any, NamedTuple

import click

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


class Entry(NamedTuple):
    """Where a command lives, and the first paragraph of its help (what `--help` lists)."""

    module: str
    attr: str
    summary: str


class LazyGroup(click.Group):
    """The command group, with every usage error exiting 1, as Terraform's do: exit 2 means
    "changes" to `plan --detailed-exitcode`, and a typo must never read as drift."""

    def __init__(self, *args: Any, lazy: Mapping[str, Entry], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.lazy.get(cmd_name)
        if cmd_name in self.commands or entry is None:
            return super().get_command(ctx, cmd_name)
        command: click.Command = getattr(
            importlib.import_module(entry.module, __package__), entry.attr
        )
        return command

    def summary_of(self, cmd_name: str, limit: int = 45) -> str:
        """What `--help` lists for a command, made from the table as click makes it from the
        command's own help."""
        entry = self.lazy.get(cmd_name)
        if entry is None:
            command = self.commands[cmd_name]
            return command.get_short_help_str(limit)
        return click.Command(cmd_name, help=entry.summary).get_short_help_str(limit)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, with the summaries from the table (no command module is imported)."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, self.summary_of(name, limit)) for name in names]
        with formatter.section(_("Commands")):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """As click's, with the command names and summaries from the table."""
        from click.shell_completion import CompletionItem

        results = [
            CompletionItem(name, help=self.summary_of(name))
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        results.extend(click.Command.shell_complete(self, ctx, incomplete))
        return results

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's; its "Did you mean" comes from the registered commands, so suggest from the
        table instead."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            no_such = getattr(click.exceptions, "NoSuchCommand", None)  # click 8.4+ suggests
            if no_such is None or not isinstance(exc, no_such):
                raise
            names = self.list_commands(ctx)
            raise no_such(exc.command_name, possibilities=names, ctx=exc.ctx) from None
