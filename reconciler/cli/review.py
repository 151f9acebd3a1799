"""The commands that show before anything is paid: `validate`, `plan`, `show`, `status`.

None of them calls the API or writes the state; each imports what it uses when it runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .common import asset_repo, friendly, load_valid, make_options, run_options


@click.command()
@friendly
def validate() -> None:
    """Load and check every spec; nothing else (the state is not even opened)."""
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
    from .. import planfile, report
    from ..workspace import Workspace

    fmt = "json" if as_json and fmt is None else fmt or "text"
    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        specs = load_valid(ws)
        options = make_options(specs, **kw)
        the_plan = ws.plan(specs, options)
        spending = ws.spending()
    finally:
        ws.close()
    data = report.plan_json(the_plan, spending=spending)
    if out is not None:
        out.write_text(planfile.dump(the_plan, data, options, sandbox=sim), encoding="utf-8")
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "markdown":
        click.echo(report.plan_markdown(the_plan, spending=spending), nl=False)
    else:
        report.render_plan(the_plan, sys.stdout, spending=spending)
        if out is not None:
            click.echo(f"Saved to {out}: `reconcile apply {out}` applies exactly this plan.")
    # A blocked spec is drift too: the videos do not match the specs until someone acts.
    if detailed_exitcode and (the_plan.changes or the_plan.blocked):
        sys.exit(2)


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
    from .. import report
    from ..audit import status_rows
    from ..daemon import META_KEY, describe
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        result = ws.load()
        rows = status_rows(ws, result.specs, invalid_files=bool(result.problems))
        daemon = describe(ws.tree.meta(META_KEY))
        spending = ws.spending()
        objects = ws.cache.describe(ws.repo)
    finally:
        ws.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        if daemon:
            click.echo(daemon, err=True)
    else:
        report.render_status(
            rows, sys.stdout, daemon=daemon, spending=spending, state=ws.state_label,
            objects=objects,
        )  # fmt: skip
    for problem in result.problems:
        click.echo(f"warning: {problem}", err=True)
