"""The commands that run and may pay: `apply` and `watch` drive the engine; `sim` serves the
simulator they can run against.

`_guard` is everything that must hold before the first POST; the heavy modules (the engine, the
workspace, the simulator) are imported inside the commands, when they run.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import CostLimitExceeded, ReconcileError
from .common import asset_repo, friendly, load_valid, make_options, run_loop, run_options

if TYPE_CHECKING:
    from .. import planfile
    from ..config import ApiSettings
    from ..engine import Engine, Summary
    from ..money import Spending
    from ..pacing import Tuning
    from ..plan import Options, Plan

SIM_KEY = "sim-key"


@click.command()
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
@run_options
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
    from .. import planfile, report
    from ..engine import Engine
    from ..money import run_limit
    from ..progress import Progress
    from ..workspace import Workspace

    saved = _saved(plan_path, sim=sim, **kw)
    if saved is not None:
        sim, yes = saved.sandbox, True
    repo = asset_repo()
    progress = Progress(sys.stderr)
    tuning = _tuning(concurrency, poll_interval, sim=sim)
    with _api(sim) as api:
        ws = Workspace(repo, sandbox=sim)
        try:
            if max_cost is not None and not math.isfinite(max_cost):
                raise ReconcileError(f"--max-cost {max_cost} is not a number of dollars")
            engine = Engine(ws, api=api, tuning=tuning, reporter=progress)
            engine.ctx.run_limit = run_limit(max_cost, ws.config.budget_per_run)
            specs = load_valid(ws)
            options = saved.options if saved else make_options(specs, **kw)
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
    from .. import planfile

    saved = planfile.load(path)
    if sim and not saved.sandbox:
        raise ReconcileError(f"{path} was planned without --sim; apply it without --sim")
    return saved


def _tuning(concurrency: int | None, poll_interval: float | None, *, sim: bool) -> Tuning | None:
    if concurrency is None and poll_interval is None and not sim:
        return None
    from ..pacing import Tuning

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
    from ..config import ApiSettings

    if sim:
        from ..sim import Simulator

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
    from ..config import API_KEY_ENV
    from ..lifecycle import PAID, ActionKind
    from ..money import EPSILON, money

    paid = the_plan.paid
    if max_cost is not None and paid:
        if not the_plan.cost_known:
            unknown = ", ".join(a.name for a in paid if a.cost is None)
            raise CostLimitExceeded(
                f"cannot estimate the cost of {unknown}: add its model and resolution to "
                "`pricing` in reconcile.yaml; nothing was submitted"
            )
        if the_plan.cost > max_cost + EPSILON:
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
    from ..shutdown import handling_signals, name_of

    def announce(signum: int) -> None:
        sys.stderr.write(
            f"\n{name_of(signum)}: stopping; operations in flight are recorded "
            "and resumed by the next run (send again to quit at once)\n"
        )

    async def main() -> Summary:
        with handling_signals(engine.stop, announce=announce):
            return await engine.apply(the_plan, options=options)

    return run_loop(main)


@click.command()
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
    from ..daemon import Daemon, DaemonSettings
    from ..engine import Engine
    from ..money import run_limit
    from ..progress import Progress
    from ..workspace import Workspace

    progress = Progress(sys.stderr, json_lines=log_format == "json")
    tuning = _tuning(concurrency, poll_interval, sim=sim)
    with _api(sim) as api:
        ws = Workspace(asset_repo(), sandbox=sim)
        try:
            engine = Engine(ws, api=api, tuning=tuning, reporter=progress)
            engine.ctx.run_limit = run_limit(None, ws.config.budget_per_run)
            settings = DaemonSettings(resync=resync, settle=settle)
            code = run_loop(Daemon(engine, settings).run)
        finally:
            ws.close()
    sys.exit(code)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--latency", default=5.0, show_default=True, type=float, help="Seconds per video.")
@click.option("--api-key", default=SIM_KEY, show_default=True, help="The key it accepts.")
@friendly
def sim(host: str, port: int, latency: float, api_key: str) -> None:
    """Serve the Veo API simulator on loopback, for your own tests."""
    import signal
    import threading

    from ..config import API_KEY_ENV
    from ..sim import Simulator

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
