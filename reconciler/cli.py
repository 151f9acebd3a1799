"""The command line: thin. Each command builds an Engine, calls it, and renders what it returns.

Library errors become one-line messages and exit 1 only here, never tracebacks.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, planfile, report
from .audit import status_rows
from .config import API_KEY_ENV, ApiSettings, load_config
from .engine import Engine, Summary
from .errors import CostLimitExceeded, ReconcileError
from .lifecycle import PAID, ActionKind
from .loader import load_specs
from .lockfile import LOCK_FILE
from .money import Spending, money, run_limit
from .pacing import Tuning
from .plan import Options, Plan
from .progress import Progress
from .shutdown import handling_signals, name_of
from .spec import Desired
from .workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])
SIM_KEY = "sim-key"


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


class _Group(click.Group):
    """The command group, with every usage error exiting 1, as Terraform's do: exit 2 means
    "changes" to `plan --detailed-exitcode`, and a typo must never read as drift."""

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The asset repo (holds specs/ and reconcile.yaml).",
)
@click.version_option(__version__, prog_name="reconcile")
@click.pass_context
def main(ctx: click.Context, repo: Path) -> None:
    """Make a repo's videos match its YAML specs, paying for each video once."""
    ctx.obj = repo


def _repo() -> Path:
    repo: Path = click.get_current_context().find_root().obj
    if not repo.is_dir():
        raise ReconcileError(f"{repo}: no such folder (pass the asset repo with --repo)")
    if not (repo / "specs").is_dir():
        # Not "no changes": a wrong --repo (or a missing specs/) would otherwise read as a repo
        # whose specs were all deleted.
        raise ReconcileError(
            f"{repo}: no specs/ folder here: pass the asset repo with --repo (or create specs/)"
        )
    return repo


def _options(f: F) -> F:
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


def _load(ws: Workspace) -> list[Desired]:
    result = ws.load()
    result.raise_for_problems()
    return result.specs


def _check_names(specs: list[Desired], names: tuple[str, ...], flag: str) -> None:
    known = {s.name for s in specs}
    for name in names:
        if name not in known:
            raise ReconcileError(f"{flag} {name}: no spec has that name")


def _make_options(specs: list[Desired], **kw: Any) -> Options:
    _check_names(specs, kw["targets"], "--target")
    _check_names(specs, kw["replace"], "--replace")
    return Options(
        targets=frozenset(kw["targets"]) | frozenset(kw["replace"])
        if kw["targets"]
        else frozenset(),
        replace=frozenset(kw["replace"]),
        retry_failed=kw["retry_failed"],
        resubmit_unknown=kw["resubmit_unknown"],
    )


@main.command()
@friendly
def validate() -> None:
    """Load and check every spec; nothing else (the state is not even opened)."""
    repo = _repo().resolve()
    result = load_specs(repo, load_config(repo))
    result.raise_for_problems()
    specs = result.specs
    click.echo(f"{len(specs)} spec{'s' if len(specs) != 1 else ''} valid.")


@main.command()
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
@_options
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
    fmt = "json" if as_json and fmt is None else fmt or "text"
    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        specs = _load(ws)
        options = _make_options(specs, **kw)
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


@main.command()
@click.argument(
    "plan_path", metavar="[PLANFILE]", required=False,
    type=click.Path(dir_okay=False, path_type=Path),
)  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Refuse a plan above this, and stop paying once the run's POSTs reach it.",
)
@click.option("--concurrency", type=click.IntRange(1, 64), help="Operations in flight (default 4).")
@click.option("--poll-interval", type=click.FloatRange(0.05), help="Seconds between polls.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the outcome as JSON.")
@_options
@friendly
def apply(
    plan_path: Path | None,
    yes: bool,
    max_cost: float | None,
    concurrency: int | None,
    poll_interval: float | None,
    as_json: bool,
    sim: bool,
    **kw: Any,
) -> None:
    """Converge: submit, poll, download and materialize until the videos match the specs.

    With PLANFILE (from `reconcile plan --out`), apply exactly that plan: it was the approval, and
    anything that moved since (a spec, another process's work) makes it refuse."""
    saved = _saved(plan_path, sim=sim, **kw)
    if saved is not None:
        sim, yes = saved.sandbox, True
    repo = _repo()
    progress = Progress(sys.stderr)
    tuning = _tuning(concurrency, poll_interval, sim=sim)
    with _api(sim) as api:
        ws = Workspace(repo, sandbox=sim)
        try:
            if max_cost is not None and not math.isfinite(max_cost):
                raise ReconcileError(f"--max-cost {max_cost} is not a number of dollars")
            engine = Engine(ws, api=api, tuning=tuning, reporter=progress)
            engine.ctx.run_limit = run_limit(max_cost, ws.config.budget_per_run)
            specs = _load(ws)
            options = saved.options if saved else _make_options(specs, **kw)
            if saved is not None:
                moved = planfile.stale(saved, ws.plan(specs, options))
                if moved:
                    raise ReconcileError(
                        f"{plan_path}: the saved plan is stale ({moved}); nothing was submitted. "
                        "Run `reconcile plan --out FILE` again and review it"
                    )
            ws.recover(progress)
            ws.import_lock(specs, progress)
            the_plan = ws.plan(specs, options)
            spending = ws.spending()
            out = sys.stderr if as_json else sys.stdout
            report.render_plan(the_plan, out, spending=spending)
            _guard(the_plan, max_cost=max_cost, spending=spending, api=api, yes=yes)
            with progress.live([a.name for a in the_plan.changes]):
                summary = _run(engine, the_plan, options)
        finally:
            ws.close()
    if as_json:
        plan_json = report.plan_json(the_plan, spending=spending)
        click.echo(json.dumps({"plan": plan_json, **report.summary_json(summary)}, indent=2))
    else:
        report.render_summary(summary, sys.stdout)
    if summary.stopped and engine.stop.signal:
        sys.exit(128 + engine.stop.signal)
    sys.exit(0 if summary.ok else 1)


def _saved(path: Path | None, *, sim: bool, **kw: Any) -> planfile.Saved | None:
    """The saved plan to apply, refusing flags that would make it another plan."""
    if path is None:
        return None
    if any(kw[k] for k in ("targets", "replace", "retry_failed", "resubmit_unknown")):
        raise ReconcileError("a saved plan carries its own options: drop --target, --replace, "
                             "--retry-failed and --resubmit-unknown, or plan again with them")  # fmt: skip
    saved = planfile.load(path)
    if sim and not saved.sandbox:
        raise ReconcileError(f"{path} was planned without --sim; apply it without --sim")
    return saved


@main.command()
@click.argument("plan_path", metavar="PLANFILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text")
@friendly
def show(plan_path: Path, fmt: str) -> None:
    """Print a plan saved by `reconcile plan --out FILE`."""
    saved = planfile.load(plan_path)
    if fmt == "json":
        click.echo(json.dumps(saved.plan, indent=2))
        return
    click.echo(f"Plan saved {saved.created}" + (" (--sim sandbox)" if saved.sandbox else "") + ":")
    report.render_saved(saved.plan, sys.stdout, markdown=fmt == "markdown")


def _tuning(concurrency: int | None, poll_interval: float | None, *, sim: bool) -> Tuning | None:
    if concurrency is None and poll_interval is None and not sim:
        return None
    tuning = Tuning.from_env()
    if concurrency:
        tuning.concurrency = concurrency
    if poll_interval:
        tuning.poll_interval = poll_interval
    elif sim:
        tuning.poll_interval = 0.5
    return tuning


@contextmanager
def _api(sim: bool) -> Iterator[ApiSettings | None]:
    """The API to talk to: the embedded simulator, or the configured one (None without a key)."""
    if sim:
        from .sim import Simulator

        with Simulator(api_key=SIM_KEY, latency=2.0, foreign_sources=True) as server:
            yield ApiSettings(
                submit_base=server.base_url, query_base=server.base_url, api_key=SIM_KEY
            )
        return
    settings = ApiSettings.from_env()
    yield settings if settings.api_key else None


def _guard(
    the_plan: Plan,
    *,
    max_cost: float | None,
    spending: Spending,
    api: ApiSettings | None,
    yes: bool,
) -> None:
    """Everything that must hold before the first POST: cost, budget, a key, approval."""
    paid = the_plan.paid
    if max_cost is not None and paid:
        if not the_plan.cost_known:
            unknown = ", ".join(a.name for a in paid if a.cost is None)
            raise CostLimitExceeded(
                f"cannot estimate the cost of {unknown}: add its model and resolution to "
                "`pricing` in reconcile.yaml; nothing was submitted"
            )
        if the_plan.cost > max_cost + 1e-9:
            raise CostLimitExceeded(
                f"the plan costs {money(the_plan.cost)}, more than --max-cost "
                f"{money(max_cost)}; nothing was submitted"
            )
    refusal = spending.refusal(the_plan.cost, known=the_plan.cost_known) if paid else None
    if refusal:
        raise CostLimitExceeded(
            f"the plan exceeds the budget in reconcile.yaml: {refusal}; nothing was submitted"
        )
    if api is None and any(a.kind in PAID or a.kind is ActionKind.RESUME for a in the_plan.actions):
        raise ReconcileError(
            f"{API_KEY_ENV} is not set: export your GPTProto API key, "
            "or try the whole loop with `reconcile apply --sim`"
        )
    if not the_plan.changes or yes:
        return
    if not sys.stdin.isatty():
        # As Terraform: a run nobody can confirm never pays by default.
        raise ReconcileError(
            "apply needs approval, and stdin is not a terminal: review `reconcile plan`, then "
            "run `reconcile apply --yes` (as CI does); nothing was submitted"
        )
    if not click.confirm("Apply these changes?", default=False, err=True):
        raise ReconcileError("cancelled; nothing was submitted")


def _run(engine: Engine, the_plan: Plan, options: Options) -> Summary:
    """Run the plan; the first SIGINT/SIGTERM stops cleanly, a second at once (``shutdown``)."""

    def announce(signum: int) -> None:
        sys.stderr.write(
            f"\n{name_of(signum)}: stopping; operations in flight are recorded "
            "and resumed by the next run (send again to quit at once)\n"
        )

    async def main() -> Summary:
        with handling_signals(engine.stop, announce=announce):
            return await engine.apply(the_plan, options=options)

    return asyncio.run(main())


@main.command()
@click.option("--concurrency", type=click.IntRange(1, 64), help="Operations in flight (default 4).")
@click.option("--poll-interval", type=click.FloatRange(0.05), help="Seconds between polls.")
@click.option(
    "--resync",
    type=click.FloatRange(1.0),
    default=300.0,
    show_default=True,
    help="Seconds between full reconciles when nothing changes.",
)
@click.option(
    "--settle",
    type=click.FloatRange(0.0),
    default=3.0,
    show_default=True,
    help="Seconds a spec file must stay unchanged before its video is paid for (0: at once).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line (time, level, event, name, operation, message).",
)
@click.option(
    "--sim", is_flag=True, help="Use the embedded simulator and the sandbox under state/sim/."
)
@friendly
def watch(
    concurrency: int | None,
    poll_interval: float | None,
    resync: float,
    settle: float,
    log_format: str,
    sim: bool,
) -> None:
    """Run as a daemon: reconcile whenever specs change, and every --resync seconds."""
    from .daemon import Daemon, DaemonSettings

    progress = Progress(sys.stderr, json_lines=log_format == "json")
    tuning = _tuning(concurrency, poll_interval, sim=sim)
    with _api(sim) as api:
        ws = Workspace(_repo(), sandbox=sim)
        try:
            engine = Engine(ws, api=api, tuning=tuning, reporter=progress)
            engine.ctx.run_limit = run_limit(None, ws.config.budget_per_run)
            settings = DaemonSettings(resync=resync, settle=settle)
            code = asyncio.run(Daemon(engine, settings).run())
        finally:
            ws.close()
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows.")
@click.option("--sim", is_flag=True, help="Show the sandbox of --sim runs.")
@friendly
def status(as_json: bool, sim: bool) -> None:
    """One row per spec: name, state, path, sha256, error."""
    from .daemon import META_KEY, describe

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
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


@main.command()
@click.option("--sim", is_flag=True, help="Verify the sandbox of --sim runs.")
@friendly
def verify(sim: bool) -> None:
    """Re-hash every output and check its duration and resolution against its spec."""
    from .audit import verify as verify_outputs

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        findings = verify_outputs(ws, _load(ws))
    finally:
        ws.close()
    for f in findings:
        click.echo(f"{'ok ' if f.ok else 'BAD'} {f.name}: {f.path or '-'}"
                   + ("" if f.ok else f" ({'; '.join(f.problems)})"))  # fmt: skip
    bad = [f for f in findings if not f.ok]
    click.echo(f"{len(findings) - len(bad)} of {len(findings)} outputs verified.")
    if bad:
        raise ReconcileError(
            f"{len(bad)} output(s) do not match their specs; `reconcile apply` repairs them"
        )


@main.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option(
    "--remote",
    is_flag=True,
    help="Also delete objects of the shared store (objects: s3://…) that nothing in THIS tree "
    "needs. Other clones, branches and CI runners cannot be seen from here: what only they "
    "need is deleted too. Without it the shared store is never touched.",
)
@click.option("--sim", is_flag=True, help="Collect in the sandbox of --sim runs.")
@friendly
def gc(dry_run: bool, remote: bool, sim: bool) -> None:
    """Delete cached videos that no current spec, output or lock entry needs."""
    from .audit import collect, collect_shared, delete, delete_shared
    from .takes import owners

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        if remote and ws.cache.remote is None:
            raise ReconcileError("--remote: no shared object store is configured (objects: "
                                 "s3://… in reconcile.yaml, or RECONCILE_OBJECTS)")  # fmt: skip
        specs = _load(ws)
        garbage = collect(ws, specs)
        shared = collect_shared(ws, specs) if remote else []
        known = owners(ws.gens.attempts())
        verb = "would delete" if dry_run else "deleted"
        for item in garbage:
            name, at = known.get(item.sha256, ("?", "?"))
            take = f"{name}'s take of {at}" if name != "?" else "no known take"
            click.echo(f"{verb} {item.sha256[:16]} ({item.size:,} bytes): {take}")
        if not dry_run:
            delete(ws, garbage)
        for item in shared:
            click.echo(f"{verb} {item.where} ({item.size:,} bytes)")
            if not dry_run:
                delete_shared(ws, [item])
    finally:
        ws.close()
    verb = "would free" if dry_run else "freed"
    total = sum(g.size for g in garbage)
    click.echo(f"{len(garbage)} cached object(s), {verb} {total:,} bytes.")
    if remote:
        total = sum(g.size for g in shared)
        click.echo(f"{len(shared)} shared object(s), {verb} {total:,} bytes.")


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for index.html and its posters [default: state/gallery, with --sim "
    "state/sim/gallery].",
)
@click.option(
    "--copy-videos",
    is_flag=True,
    help="Copy the videos into the folder too, so it stands alone (a CI artifact).",
)
@click.option("--sim", is_flag=True, help="Show the sandbox of --sim runs.")
@friendly
def gallery(out: Path | None, copy_videos: bool, sim: bool) -> None:
    """Write a static review page: one card per spec, with its video, a poster frame, its prompt,
    model, cost and state (and why, for a spec without a video)."""
    from .gallery import build

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        result = ws.load()
        page = build(ws, result.specs, out=out, copy_videos=copy_videos,
                     invalid_files=bool(result.problems))  # fmt: skip
    finally:
        ws.close()
    for problem in result.problems:
        click.echo(f"warning: {problem}", err=True)
    playable = sum(1 for c in page.cards if c.video)
    posters = sum(1 for c in page.cards if c.poster)
    click.echo(f"Gallery: {len(page.cards)} cards, {playable} with a video "
               f"(posters: {page.decoded} decoded, {posters - page.decoded} reused).")  # fmt: skip
    click.echo(f"Open {page.index.as_uri()}")


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the takes as JSON.")
@click.option("--sim", is_flag=True, help="The sandbox of --sim runs.")
@friendly
def takes(name: str, as_json: bool, sim: bool) -> None:
    """Every video NAME ever had: when, prompt, cost, whether its bytes are still cached. Pin one
    with `take: <sha256 prefix>` in the spec to show it again, for free."""
    from . import takes as takes_module

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        out = ws.tree.output(name)
        found = takes_module.of(
            name, ws.gens.attempts(), ws.gens.generations(), cached=ws.cache.has,
            current=out.sha256 if out else None,
        )  # fmt: skip
    finally:
        ws.close()
    if as_json:
        click.echo(json.dumps([t.__dict__ for t in found], indent=2))
        return
    if not found:
        raise ReconcileError(f"{name} has no takes recorded here")
    for t in found:
        mark = "*" if t.current else " "
        where = "cached" if t.cached else "gone"
        prompt = (t.prompt or "")[:60]
        click.echo(f"{mark} {t.sha256[:16]}  {t.at}  {money(t.cost):>8}  {where:<6}  {prompt}")
    click.echo('(* the file in place now; `take: "<first 8+ hex>"` in the spec pins one)')


@main.command()
@click.argument("name")
@click.option("--operation", help="The operation name the provider gave for it.")
@click.option(
    "--abandoned",
    is_flag=True,
    help="The process submitting it is gone (another host, a wedged run): record it as unknown.",
)
@click.option("--sim", is_flag=True, help="Resolve in the sandbox of --sim runs.")
@click.option("--force", is_flag=True, help="Replace an operation already recorded for it.")
@friendly
def resolve(name: str, operation: str | None, abandoned: bool, sim: bool, force: bool) -> None:
    """Settle a spec whose submission is unknown (--operation) or stuck elsewhere (--abandoned)."""
    if (operation is None) == (not abandoned):
        raise ReconcileError("give --operation OP (the job was found) or --abandoned, not both")
    if operation is not None and "operations/" not in operation:
        raise ReconcileError(
            f"--operation {operation!r} is not an operation name "
            "(models/MODEL/operations/ID or operations/ID)"
        )
    ws = Workspace(_repo(), sandbox=sim)
    try:
        specs = {s.name: s for s in _load(ws)}
        if name not in specs:
            raise ReconcileError(f"no spec named {name!r}")
        if operation is None:
            ws.abandon(specs[name])
        else:
            ws.resolve(specs[name], operation, force=force)
    finally:
        ws.close()
    if operation is None:
        click.echo(f"{name}: recorded as unknown; `reconcile resolve {name} --operation OP` "
                   "adopts its job if found, `apply --resubmit-unknown` pays for a new one.")  # fmt: skip
    else:
        click.echo(
            f"{name}: adopted {operation}; `reconcile apply` polls it instead of submitting."
        )


@main.command()
@friendly
def init() -> None:
    """Start an asset repo here: an example spec, reconcile.yaml, Git LFS and lock-merge
    attributes, state/ ignored, a CI workflow. Existing files are left alone."""
    repo: Path = click.get_current_context().find_root().obj
    repo.mkdir(parents=True, exist_ok=True)
    from .scaffold import init as scaffold

    for rel, written in scaffold(repo):
        click.echo(f"{'created' if written else 'kept   '} {rel}")
    click.echo(
        "Next: `git lfs install`, then `git config merge.reconcile-lock.driver "
        '"reconcile lock merge --driver %O %A %B"`, then `reconcile plan`.'
    )


@main.command()
@click.option(
    "--by",
    type=click.Choice(["day", "month", "spec", "model"]),
    default="day",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the lines as JSON.")
@click.option("--sim", is_flag=True, help="The sandbox of --sim runs.")
@friendly
def cost(by: str, as_json: bool, sim: bool) -> None:
    """What POSTs that may be billed cost, from the ledger (failed and filtered operations are
    not billed by the provider: this is an upper bound)."""
    from .costs import report as cost_report

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        lines = cost_report(ws.gens.attempts(), ws.gens.generations(), by)
    finally:
        ws.close()
    if as_json:
        click.echo(json.dumps([line.__dict__ for line in lines], indent=2))
        return
    for line in lines:
        click.echo(f"{line.group:<40} {money(line.usd):>10}  {line.posts} POST(s)")
    click.echo(f"{'total':<40} {money(sum(line.usd for line in lines)):>10}")


@main.group()
def lock() -> None:
    """Repair reconcile.lock without paying."""


@lock.command("merge")
@click.option(
    "--driver",
    nargs=3,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="BASE OURS THEIRS",
    help="Run as git's merge driver for reconcile.lock (%O %A %B): the result goes to OURS.",
)
@click.option("--sim", is_flag=True, help="Merge the sandbox's lock of --sim runs.")
@friendly
def lock_merge(driver: tuple[Path, Path, Path] | None, sim: bool) -> None:
    """Resolve a merge conflict in reconcile.lock: keep both sides' entries, and for a spec both
    changed, the take whose file is here (else the one of the spec as it is, else the newer)."""
    from .repairs import merge_lock

    ws = Workspace(_repo(), sandbox=sim, read_only=True)
    try:
        specs = ws.load().specs  # keys of the specs that parse; a broken spec must not block this
        if driver:
            notes = merge_lock(ws, specs, ours=driver[1], theirs=driver[2])
        else:
            notes = merge_lock(ws, specs)
    finally:
        ws.close()
    for note in notes:
        click.echo(note)
    click.echo(f"{LOCK_FILE} merged; `reconcile plan` shows what it means.")


@main.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--sim", is_flag=True, help="Adopt in the sandbox of --sim runs.")
@friendly
def adopt(names: tuple[str, ...], sim: bool) -> None:
    """Take existing videos (OUTPUTDIR/NAME.<hash>.mp4) as their specs' current takes, when the
    lock and the state know nothing of them (a lost lock). Your word that they match the specs."""
    from .repairs import adopt as adopt_videos

    ws = Workspace(_repo(), sandbox=sim)
    try:
        specs = _load(ws)
        _check_names(specs, names, "adopt")
        said = adopt_videos(ws, specs, set(names) if names else None)
        ws.write_lock()
    finally:
        ws.close()
    for line in said:
        click.echo(line)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--latency", default=5.0, show_default=True, type=float, help="Seconds per video.")
@click.option("--api-key", default=SIM_KEY, show_default=True, help="The key it accepts.")
@friendly
def sim(host: str, port: int, latency: float, api_key: str) -> None:
    """Serve the Veo API simulator on loopback, for your own tests."""
    from .sim import Simulator

    server = Simulator(host=host, port=port, latency=latency, api_key=api_key, log=True).start()
    click.echo(f"Veo simulator on {server.base_url} (key {api_key!r}); Ctrl-C stops it.", err=True)
    click.echo(f"export RECONCILE_API_BASE={server.base_url} {API_KEY_ENV}={api_key}", err=True)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
