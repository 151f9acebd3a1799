"""The commands that show before anything is paid: `validate`, `plan`, `show`, `status`.

None of them calls the API or writes the state; each imports what it uses when it runs.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..memo import Memo, canonical, take_missed
from .common import asset_repo, friendly, leave_quickly, make_options, run_options

if TYPE_CHECKING:
    from ..workspace import Workspace


@click.command()
@friendly
def validate() -> None:
    """Load and check every spec; nothing else (the state is not even opened)."""
    leave_quickly()
    from ..config import load_config
    from ..loader import load_specs

    repo = asset_repo().resolve()
    result = load_specs(repo, load_config(repo))
    result.raise_for_problems()
    specs = result.specs
    click.echo(f"{len(specs)} spec{'s' if len(specs) != 1 else ''} valid.")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (--format json).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default=None,
    help="text (default), json, or markdown: a pull-request comment.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the plan; `reconcile apply FILE` applies exactly it, or refuses if anything moved.",
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 no changes, 2 changes, 1 error.")
@run_options
@friendly
def plan(
    as_json: bool,
    fmt: str | None,
    out: Path | None,
    detailed_exitcode: bool,
    sim: bool,
    **kw: Any,
) -> None:
    """Show what apply would do and what it would cost. Never calls the API."""
    leave_quickly()
    repo = asset_repo().resolve()
    args = canonical(
        "plan", fmt=fmt, as_json=as_json, detailed=detailed_exitcode, targets=kw["targets"],
        replace=kw["replace"], retry_failed=kw["retry_failed"],
        resubmit_unknown=kw["resubmit_unknown"],
    )  # fmt: skip
    fmt = str(args[1])  # --json alone means --format json; neither, text
    memo = _memo(repo, args) if out is None and not sim else None
    from ..fanout import gc_paused

    # No cyclic GC for the rest of this short process: the load, the plan and its rows are
    # tens of thousands of objects without cycles that each full collection would walk again.
    with gc_paused():
        code = _plan(repo, fmt, out, detailed_exitcode, sim, memo, kw)
    if code:
        sys.exit(code)


def _plan(
    repo: Path,
    fmt: str,
    out: Path | None,
    detailed_exitcode: bool,
    sim: bool,
    memo: Memo | None,
    kw: dict[str, Any],
) -> int:
    """The plan printed (and saved with ``--out``); its exit code."""
    from ..config import load_config
    from ..loader import load_specs

    opened: list[Workspace] = []

    def meanwhile() -> None:
        # While forked children parse the specs: the plan's own modules (~30 ms of imports at
        # first) and its state opened. The loader reads what the workspace does of the config.
        from ..workspace import Workspace

        opened.append(Workspace(repo, sandbox=sim, read_only=True, config=config))

    config = load_config(repo)  # read once: the loader's and the workspace's
    try:
        result = load_specs(repo, config, meanwhile=meanwhile)
        ws = opened[0]
        result.raise_for_problems()
        specs = result.specs
        options = make_options(specs, **kw)
        the_plan = ws.plan(specs, options)
        spending = ws.spending()
    finally:
        for each in opened:
            each.close()
    from .. import planfile, report

    # The JSON form is for --format json and --out only (10,000 rows: ~0.07 s to build).
    data = report.plan_json(the_plan, spending=spending) if fmt == "json" or out else {}
    if out is not None:
        out.write_text(planfile.dump(the_plan, data, options, sandbox=sim), encoding="utf-8")
    text = io.StringIO() if memo else sys.stdout
    if fmt == "json":
        text.write(json.dumps(data, indent=2) + "\n")
    elif fmt == "markdown":
        text.write(report.plan_markdown(the_plan, spending=spending))
    else:
        report.render_plan(the_plan, text, spending=spending)
        if out is not None:
            text.write(f"Saved to {out}: `reconcile apply {out}` applies exactly this plan.\n")
    # A blocked spec is drift too: the videos do not match the specs until someone acts.
    code = 2 if detailed_exitcode and (the_plan.changes or the_plan.blocked) else 0
    if isinstance(text, io.StringIO):
        sys.stdout.write(text.getvalue())
    if memo and isinstance(text, io.StringIO):
        from ..audit import memo_inputs

        inputs = ws.last_read and memo_inputs(
            ws, specs, ws.last_read, result.index, memo.started_ns
        )
        _answer(memo, (text.getvalue(), "", code), inputs)
    return code


@click.command()
@click.argument("plan_path", metavar="PLANFILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text")
@friendly
def show(plan_path: Path, fmt: str) -> None:
    """Print a plan saved by `reconcile plan --out FILE`."""
    from .. import planfile, report

    saved = planfile.load(plan_path)
    if fmt == "json":
        click.echo(json.dumps(saved.plan, indent=2))
        return
    click.echo(f"Plan saved {saved.created}" + (" (--sim sandbox)" if saved.sandbox else "") + ":")
    report.render_saved(saved.plan, sys.stdout, markdown=fmt == "markdown")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows.")
@click.option("--sim", is_flag=True, help="Show the sandbox of --sim runs.")
@friendly
def status(as_json: bool, sim: bool) -> None:
    """One row per spec: name, state, path, sha256, error."""
    leave_quickly()
    repo = asset_repo().resolve()
    memo = None if sim else _memo(repo, canonical("status", as_json=as_json))
    from .. import report
    from ..audit import memo_inputs, read_records, status_rows
    from ..daemon import META_KEY, describe
    from ..workspace import Workspace

    ws = Workspace(repo, sandbox=sim, read_only=True)
    try:
        result = ws.load()
        read = read_records(ws)
        rows = status_rows(ws, result.specs, invalid_files=bool(result.problems), read=read)
        daemon = describe(ws.tree.meta(META_KEY))
        spending = ws.spending()
        objects = ws.cache.describe(ws.repo)
    finally:
        ws.close()
    text, notes = io.StringIO(), io.StringIO()
    if as_json:
        text.write(json.dumps(rows, indent=2) + "\n")
        if daemon:
            notes.write(daemon + "\n")
    else:
        out = text if memo else sys.stdout
        report.render_status(
            rows, out, daemon=daemon, spending=spending, state=ws.state_label, objects=objects
        )
    for problem in result.problems:
        notes.write(f"warning: {problem}\n")
    sys.stdout.write(text.getvalue())
    sys.stderr.write(notes.getvalue())
    if memo and not daemon:  # the daemon's line says whether it is alive: never replayed
        inputs = memo_inputs(ws, result.specs, read, result.index, memo.started_ns)
        _answer(memo, (text.getvalue(), notes.getvalue(), 0), inputs)


def _memo(repo: Path, args: tuple[object, ...]) -> Memo | None:
    """The answer memo for a command whose output goes to a pipe (a terminal's rich table
    depends on its size), after replaying its answer and exiting when nothing it read changed."""
    if sys.stdout is None or sys.stdout.isatty():
        return None
    missed = take_missed(repo, args)
    if missed is not None:
        return missed
    memo = Memo(repo, args)
    answer = memo.replay()
    if answer is None:
        return memo
    stdout, stderr, code = answer
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    sys.exit(code)


def _answer(memo: Memo, answer: tuple[str, str, int], inputs: tuple[list[str], int] | None) -> None:
    """Keep the answer just printed, when it can be memoized (``inputs``: see memo_inputs)."""
    if inputs is not None:
        memo.record(answer, paths=inputs[0], until_ns=inputs[1])
