"""What the commands share: the error boundary, the asset repo, and the options of a run.

Imported only once a command runs (never for `reconcile --help`), so it may import what every
command needs; what only some need is imported inside them.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import ReconcileError

if TYPE_CHECKING:
    from ..plan import Options
    from ..spec import Desired
    from ..workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

leaving_quickly = False  # see leave_quickly


def leave_quickly() -> None:
    """Let this run end without the interpreter's teardown (``reconciler.__main__.leave``): for
    a command that only reads, whose files are all written and closed by the time it returns."""
    global leaving_quickly
    leaving_quickly = True


def friendly(fn: F) -> F:
    """Turn every error a user can cause into one message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReconcileError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) and reader_left():
                sys.exit(QUIET_EPIPE)  # our output's reader left; a socket's pipe is said below
            # A folder where a file should be, a read-only disk, a port in use: name it, no trace.
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)
        except sqlite3.Error as exc:
            click.echo(f"Error: the state db (state/reconciler.db) failed: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


QUIET_EPIPE = 141  # 128 + SIGPIPE: how `git log | head` and coreutils end when the reader left


def reader_left() -> bool:
    """Whether our output is a pipe whose reader has gone (`reconcile status | head`): then
    there is nobody to tell, and the rest of the output goes nowhere instead of raising again
    at exit. The shell's own tools end the same way, without a word."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (OSError, ValueError):
        return False
    return True


def given_repo() -> Path:
    """The --repo of the root command, as given (`init` creates it)."""
    repo: Path = click.get_current_context().find_root().obj
    return repo


def asset_repo() -> Path:
    """The --repo of the root command, refused unless it holds specs/."""
    repo = given_repo()
    if not repo.is_dir():
        raise ReconcileError(f"{repo}: no such folder (pass the asset repo with --repo)")
    if not (repo / "specs").is_dir():
        # Not "no changes": a wrong --repo (or a missing specs/) would otherwise read as a repo
        # whose specs were all deleted.
        raise ReconcileError(
            f"{repo}: no specs/ folder here: pass the asset repo with --repo (or create specs/)"
        )
    return repo


def run_options(f: F) -> F:
    """The options that choose what a run does: `plan` and `apply` take the same ones."""
    for option in reversed(
        [
            click.option("--target", "targets", multiple=True, metavar="NAME",
                         help="Only these specs (repeatable)."),
            click.option("--replace", "replace", multiple=True, metavar="NAME",
                         help="Pay for a new generation of this spec (repeatable)."),
            click.option("--retry-failed", is_flag=True,
                         help="Resubmit specs whose generation failed for good."),
            click.option("--resubmit-unknown", is_flag=True,
                         help="Resubmit specs whose submission outcome is unknown (may pay twice)."),
            click.option("--sim", is_flag=True,
                         help="Use the embedded simulator and the sandbox under state/sim/."),
        ]
    ):  # fmt: skip
        f = option(f)
    return f


def load_valid(ws: Workspace) -> list[Desired]:
    """Every spec, or the repo's problems as one error: a run never acts on half the specs."""
    result = ws.load()
    result.raise_for_problems()
    return result.specs


def check_names(specs: list[Desired], names: tuple[str, ...], flag: str) -> None:
    known = {s.name for s in specs}
    for name in names:
        if name not in known:
            raise ReconcileError(f"{flag} {name}: no spec has that name")


def make_options(specs: list[Desired], **kw: Any) -> Options:
    """The plan's options from `run_options`, refusing names no spec has."""
    from ..plan import Options

    check_names(specs, kw["targets"], "--target")
    check_names(specs, kw["replace"], "--replace")
    return Options(
        targets=frozenset(kw["targets"]) | frozenset(kw["replace"])
        if kw["targets"]
        else frozenset(),
        replace=frozenset(kw["replace"]),
        retry_failed=kw["retry_failed"],
        resubmit_unknown=kw["resubmit_unknown"],
    )


LOOPS = ("uvloop", "asyncio")


def run_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's event loop to ``main``'s end: uvloop's where it is installed (a
    dependency on Linux and macOS), asyncio's otherwise or with ``RECONCILE_EVENT_LOOP=asyncio``.

    uvloop runs the loop's machinery (handles, timers, transports) in C: an apply of 1,000 specs
    spent 13% less CPU in five runs of five (bench/README.md). Our code is the same on both; the
    in-process tests run on asyncio's loop, the command-line ones on uvloop's."""
    import asyncio
    import os

    chosen = os.environ.get("RECONCILE_EVENT_LOOP") or LOOPS[0]
    if chosen not in LOOPS:
        raise ReconcileError(f"RECONCILE_EVENT_LOOP: {chosen!r} is not one of {', '.join(LOOPS)}")
    factory = None
    if chosen == "uvloop":
        try:
            import uvloop
        except ImportError:  # Windows, or a Python it has no wheel for: asyncio's loop
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
