"""Money at the edges: what a gateway's 5xx means, what limits bound, approval, and the
operation names of paid jobs. Each test pins one way "never pay twice" used to break.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from conftest import API_KEY, Repo

from reconciler import sim as simmod
from reconciler.sim import Simulator

FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}
SPEC = "name: {name}\nmodel: veo-3.1-generate-preview\nprompt: {prompt}\ndurationSeconds: 4\n"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=API_KEY, latency=0.1) as server:
        yield server


def write_spec(repo: Repo, name: str = "hero", prompt: str = "A lighthouse at dusk.") -> None:
    """A $1.60 spec (standard model, 4 s at $0.40/s)."""
    repo.write(f"specs/{name}.yaml", SPEC.format(name=name, prompt=prompt))


def apply(repo: Repo, *args: str, **env: str):  # type: ignore[no-untyped-def]
    return repo.apply(*args, env=repo.env(**{**FAST_ENV, **env}))


def ledger(repo: Repo) -> list[dict[str, object]]:
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM attempts ORDER BY id")]


# -- 1. a gateway's 5xx to a sent POST is ambiguous -----------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_after_the_post_was_sent_is_unknown_never_resubmitted(
    repo: Repo, sim: Simulator, status: int
) -> None:
    """A gateway that accepted (and billed) the job, then answered 5xx: the spec is unknown, and
    neither this run nor the next pays again by itself."""
    write_spec(repo)
    sim.inject("submit", simmod.gateway_error(status), times=50)
    first = apply(repo)
    assert first.returncode == 1
    assert sim.paid_posts == 1 and sim.post_requests == 1
    assert repo.status()["hero"]["state"] == "unknown"
    assert "may exist and be billed" in first.stderr
    second = apply(repo)
    assert second.returncode == 1 and sim.post_requests == 1
    assert "resubmit-unknown" in second.stdout + second.stderr


def test_opting_into_5xx_retries_resubmits_with_the_risk_named(repo: Repo, sim: Simulator) -> None:
    """retries.resubmitAfterServerError retries a 5xx POST (a provider that answers 5xx before
    accepting): one failed POST, then one paid."""
    repo.write("reconcile.yaml", "retries:\n  resubmitAfterServerError: true\n")
    write_spec(repo)
    sim.inject("submit", simmod.server_error(503))
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 2 and sim.paid_posts == 1


# -- 2. --max-cost and the budget bound what is really spent ----------------------------------------


def test_max_cost_bounds_retries_that_may_be_billed(repo: Repo, sim: Simulator) -> None:
    """With 5xx retries allowed and a gateway that always bills then fails, --max-cost 4 lets at
    most two $1.60 POSTs out in a run, whatever the retry budget; a second run spends as much."""
    repo.write("reconcile.yaml", "retries:\n  resubmitAfterServerError: true\n")
    write_spec(repo)
    sim.inject("submit", simmod.gateway_error(504), times=100)
    first = apply(repo, "--max-cost", "4")
    assert first.returncode == 1
    assert sim.post_requests == 2, first.stderr
    assert "limit of $4.00 would be exceeded" in first.stdout + first.stderr
    apply(repo, "--max-cost", "4")
    assert sim.post_requests == 4  # per run: a budget is what bounds days and months


def test_a_daily_budget_bounds_every_run_of_the_day(repo: Repo, sim: Simulator) -> None:
    """budget.perDay counts every POST that may be billed today, across runs: two runs of a
    gateway that always bills and fails pay at most the day's budget."""
    repo.write(
        "reconcile.yaml",
        "retries:\n  resubmitAfterServerError: true\nbudget:\n  perDay: 3.5\n",
    )
    write_spec(repo)
    sim.inject("submit", simmod.gateway_error(504), times=100)
    apply(repo)
    apply(repo)
    assert sim.post_requests == 2  # $3.20 spent; a third $1.60 would pass $3.50
    status = repo.run("status")
    assert "today $3.20 of $3.50 spent, $0.30 left" in status.stdout
    plan = repo.run("plan")
    assert "Budget: today $3.20 of $3.50 spent" in plan.stdout


@pytest.mark.slow  # over 4 s of retries and waits: out of the dev loop
def test_answers_that_prove_nothing_was_accepted_are_refunded(repo: Repo, sim: Simulator) -> None:
    """429s cost nothing: a run limited to one video's price still converges through them."""
    write_spec(repo)
    sim.inject("submit", simmod.rate_limited(0.05), times=3)
    result = apply(repo, "--max-cost", "1.6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 4 and sim.paid_posts == 1
    costs = [r["cost"] for r in ledger(repo) if r["cost"] is not None]
    assert sum(costs) == pytest.approx(1.6)  # four charges, three refunds


def test_a_plan_over_the_budget_is_refused_before_any_post(repo: Repo, sim: Simulator) -> None:
    """A plan that costs more than is left of the day's budget submits nothing."""
    repo.write("reconcile.yaml", "budget:\n  perDay: 2\n")
    write_spec(repo, "a", "First prompt.")
    write_spec(repo, "b", "Second prompt.")
    result = apply(repo)
    assert result.returncode == 1
    assert "more than the $2.00 left of today's budget" in result.stderr
    assert sim.post_requests == 0


def test_plan_json_reports_spending(repo: Repo, sim: Simulator) -> None:
    """plan --json carries what was spent today and this month, and what is left."""
    repo.write("reconcile.yaml", "budget:\n  perMonth: 10\n")
    write_spec(repo)
    assert apply(repo).returncode == 0
    data = json.loads(repo.run("plan", "--json").stdout)
    assert data["spending"]["today_usd"] == pytest.approx(1.6)
    assert data["spending"]["left_usd"] == pytest.approx(8.4)


# -- 3. approval ------------------------------------------------------------------------------------


def test_apply_without_yes_on_a_pipe_refuses(repo: Repo, sim: Simulator) -> None:
    """As Terraform: nobody can confirm on a non-interactive stdin, so nothing is paid."""
    write_spec(repo)
    result = repo.run("apply", env=repo.env(**FAST_ENV))
    assert result.returncode == 1
    assert "needs approval" in result.stderr and "--yes" in result.stderr
    assert sim.post_requests == 0


def test_apply_without_yes_and_nothing_to_do_succeeds(repo: Repo, sim: Simulator) -> None:
    """Approval is asked only for changes: a converged repo applies cleanly without --yes."""
    write_spec(repo)
    assert apply(repo).returncode == 0
    assert repo.run("apply").returncode == 0


# -- 4. HTTP errors of polls and downloads are never final ----------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        ("poll", simmod.http_error(400)),
        ("poll", simmod.http_error(302)),
        ("poll", simmod.http_error(400, "The request was blocked by safety filters")),
        ("download", simmod.http_error(400)),
        ("download", simmod.http_error(410)),
    ],
    ids=["poll-400", "poll-302", "poll-policy-words", "download-400", "download-410"],
)
def test_an_http_error_on_a_paid_job_is_retried_not_final(
    repo: Repo, sim: Simulator, endpoint: str, fault: simmod.Fault
) -> None:
    """One odd answer while polling or downloading says nothing about the job: it converges."""
    write_spec(repo)
    sim.inject(endpoint, fault)
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1
    assert repo.status()["hero"]["state"] == "materialized"


@pytest.mark.slow  # over 4 s of retries and waits: out of the dev loop
def test_a_lasting_download_404_leaves_the_job_resumable(repo: Repo, sim: Simulator) -> None:
    """Within the file's lifetime a 404 may be a lagging replica: the spec stays succeeded, and
    the next run downloads it with no new POST."""
    write_spec(repo)
    sim.inject("download", simmod.expired(), times=20)
    first = apply(repo)
    assert first.returncode == 1
    assert repo.status()["hero"]["state"] == "succeeded"
    assert "the next run tries again" in first.stdout + first.stderr
    sim._faults["download"].clear()  # the provider answers again
    second = apply(repo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sim.paid_posts == 1


@pytest.mark.slow  # over 4 s of retries and waits: out of the dev loop
def test_a_download_404_past_the_files_expiry_is_final(repo: Repo, sim: Simulator) -> None:
    """Once the provider's keeping time has passed, a 404 is what it seems: failed, with the way
    out named, and never paid again by itself."""
    write_spec(repo)
    sim.inject("download", simmod.expired(), times=20)
    apply(repo)
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn, conn:
        conn.execute(
            "UPDATE generations SET finished_at = ?, remote_until = ?",
            [three_days_ago, three_days_ago],
        )
    result = apply(repo)
    assert result.returncode == 1
    row = repo.status()["hero"]
    assert row["state"] == "failed" and "--retry-failed" in row["error"]
    assert sim.paid_posts == 1


# -- 5. the operation name of an accepted POST is never lost ---------------------------------------


@pytest.mark.slow
def test_a_db_deleted_while_the_post_waits_keeps_the_operation(repo: Repo, sim: Simulator) -> None:
    """The state db vanishes while the POST is on the wire: the operation name is printed and
    kept beside it, and the next run adopts it instead of paying again."""
    write_spec(repo)
    sim.inject("submit", simmod.stall(1.5))
    proc = repo.spawn_apply(env=repo.env(**FAST_ENV))
    repo.wait_for_posts(1)
    (repo.path / "state" / "reconciler.db").unlink()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    (op,) = sim.operations.values()
    assert op.name in err and "rescued.jsonl" in err
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1
    assert repo.status()["hero"]["operation"] == op.name


def test_a_db_deleted_under_an_in_process_apply_keeps_the_operation(
    repo: Repo, sim: Simulator
) -> None:
    """The same with the apply in this process, the db deleted from a thread while its POST
    waits: the operation name is printed and kept, and the next run adopts it."""
    write_spec(repo)
    sim.inject("submit", simmod.stall(1.5))

    def delete_the_db_once_posted() -> None:
        repo.wait_for_posts(1)
        (repo.path / "state" / "reconciler.db").unlink()

    deleter = threading.Thread(target=delete_the_db_once_posted)
    deleter.start()
    try:
        first = apply(repo)
    finally:
        deleter.join()
    assert first.returncode == 1
    (op,) = sim.operations.values()
    assert op.name in first.stderr and "rescued.jsonl" in first.stderr
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1
    assert repo.status()["hero"]["operation"] == op.name


# -- 6. prices and limits are validated ------------------------------------------------------------


@pytest.mark.parametrize("value", ["-.inf", ".nan", "-0.4", ".inf"])
def test_a_price_that_is_not_a_price_is_refused_before_anything(
    repo: Repo, sim: Simulator, value: str
) -> None:
    """NaN, infinite or negative prices would make any plan pass --max-cost: refused up front."""
    repo.write("reconcile.yaml", f"pricing:\n  veo-3.1-generate-preview: {{720p: {value}}}\n")
    write_spec(repo)
    result = apply(repo, "--max-cost", "1")
    assert result.returncode == 1
    assert "reconcile.yaml:2: pricing.veo-3.1-generate-preview.720p" in result.stderr
    assert "Traceback" not in result.stderr and sim.post_requests == 0


@pytest.mark.slow
def test_the_json_log_of_watch_carries_each_posts_cost(repo: Repo, sim: Simulator) -> None:
    """Each submit line of `watch --log-format json` says what the POST may cost."""
    write_spec(repo)
    proc = repo.spawn("watch", "--settle", "0", "--poll-interval", "0.1", "--log-format", "json",
                      env=repo.env(**FAST_ENV))  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while repo.status()["hero"]["state"] != "materialized":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    submits = [json.loads(line) for line in err.splitlines() if '"event": "submit"' in line]
    assert submits and submits[0]["cost_usd"] == pytest.approx(1.6)


@pytest.mark.slow
def test_watch_pays_only_for_a_spec_that_settled(repo: Repo, sim: Simulator) -> None:
    """Saves a second apart (an editor autosaving while someone types) pay for nothing: only the
    version that then stays unchanged for the default settle period becomes a video."""
    write_spec(repo, prompt="A light")
    proc = repo.spawn("watch", "--poll-interval", "0.1", env=repo.env(**FAST_ENV))
    try:
        for prompt in ("A lighthouse", "A lighthouse at", "A lighthouse at dusk."):
            time.sleep(1.0)
            write_spec(repo, prompt=prompt)
        assert sim.post_requests == 0
        deadline = time.monotonic() + 30
        while repo.status()["hero"]["state"] != "materialized":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert sim.paid_posts == 1
    assert sim.posts_for("A lighthouse at dusk.") == 1
