"""Faults of every kind the API produces, end to end through the real CLI and the simulator.

Each test injects one fault class and pins what the promises demand of it: how many POSTs reached
the simulator and how many of them were paid, the final state in ``reconcile status``, the files in
videos/ and the object cache, the exit code, and the summary naming each failure with its reason.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, Repo, assert_key_nowhere

from reconciler import failpoints
from reconciler import sim as simmod
from reconciler.pacing import Tuning
from reconciler.sim import Simulator

# Short backoff; short HTTP timeouts so that a wedged request fails the test instead of hanging it.
FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}
PROMPTS = {
    "alpha": "A red kite flying over green hills, fault-test alpha.",
    "beta": "Waves breaking on black volcanic sand, fault-test beta.",
    "gamma": "A neon city street in the rain at night, fault-test gamma.",
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A quicker simulator than conftest's: these tests wait on operations many times over."""
    with Simulator(api_key=API_KEY, latency=0.1, video="standin") as server:
        yield server


def write_spec(repo: Repo, name: str, prompt: str | None = None) -> None:
    prompt = prompt or PROMPTS[name]
    repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                      f"prompt: {prompt}\n")  # fmt: skip


def apply(repo: Repo, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return repo.apply(*args, env=repo.env(**{**FAST_ENV, **env}))


def ledger(repo: Repo, name: str) -> list[dict[str, Any]]:
    """Every ledger row of one spec name, oldest first: charges, outcomes and takes."""
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM attempts WHERE name = ? ORDER BY id", [name])
        return [dict(r) for r in rows]


def attempts(repo: Repo, name: str) -> list[dict[str, Any]]:
    """The outcomes of one spec's POSTs, oldest first (without the charge a claim appends before
    each POST, and without the take a download appends)."""
    return [r for r in ledger(repo, name) if r["outcome"] not in ("submit", "take")]


def assert_verified(repo: Repo, sim: Simulator, row: dict[str, Any]) -> None:
    """The output file holds exactly the bytes the simulator served for the row's operation."""
    assert row["state"] == "materialized", row
    data = (repo.path / row["path"]).read_bytes()
    op = sim.operations[row["operation"].rsplit("operations/", 1)[1]]
    assert op.file_id is not None
    assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert data == sim.served_bytes(op.file_id)


def assert_no_partials(repo: Repo) -> None:
    """No temp file left in videos/, and every cached object is whole (its bytes match its name)."""
    leftovers = [p for p in (repo.path / "videos").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    for path in (repo.path / "state" / "objects").rglob("*"):
        if path.is_file():
            assert not path.name.startswith("."), path
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.parent.name + path.name


# -- rate limits and server errors: retried, one paid POST ---------------------------------------


@pytest.mark.parametrize("retry_after", [1.0, None], ids=["retry-after", "backoff"])
def test_429_on_submit_waits_retries_and_pays_once(
    repo: Repo, sim: Simulator, retry_after: float | None
) -> None:
    """A 429 on submit (with or without Retry-After) is waited out, retried and paid once per spec."""
    write_spec(repo, "alpha")
    write_spec(repo, "beta")
    sim.inject("submit", simmod.rate_limited(retry_after), prompt_contains="alpha")
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 3 and sim.paid_posts == 2
    assert sim.posts_for("alpha") == 1 and sim.posts_for("beta") == 1
    tries = [r for r in sim.requests if r.method == "POST" and "alpha" in json.dumps(r.json)]
    gap = tries[1].time - tries[0].time
    if retry_after is not None:
        assert gap >= 0.95, gap  # Retry-After honoured
    else:
        assert gap < 0.9, gap  # RECONCILE_RETRY_BASE backoff, not a fixed long wait
    rows = attempts(repo, "alpha")
    assert [r["outcome"] for r in rows] == ["transient", "accepted"]
    refunded = [r["cost"] for r in ledger(repo, "alpha") if r["cost"] is not None]
    assert sum(refunded) == pytest.approx(0.8)  # two charges, the 429's refunded
    assert rows[0]["status"] == 429 and "rate limited" in rows[0]["message"]
    assert [r["outcome"] for r in attempts(repo, "beta")] == ["accepted"]
    for row in repo.status().values():
        assert_verified(repo, sim, row)


@pytest.mark.parametrize("endpoint", ["submit", "poll", "download"])
def test_5xx_is_retried_with_backoff(repo: Repo, sim: Simulator, endpoint: str) -> None:
    """503/500 answers on poll or download are retried until the spec converges; on submit only
    with retries.resubmitAfterServerError (a gateway's 5xx may come after a billed accept); one
    paid POST."""
    if endpoint == "submit":
        repo.write("reconcile.yaml", "retries:\n  resubmitAfterServerError: true\n")
    write_spec(repo, "alpha")
    sim.inject(endpoint, simmod.server_error(503))
    sim.inject(endpoint, simmod.server_error(500))
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1
    assert sim.post_requests == (3 if endpoint == "submit" else 1)
    if endpoint == "poll":
        assert sim.polls >= 3
    if endpoint == "download":
        assert sim.downloads == 3
    outcomes = [r["outcome"] for r in attempts(repo, "alpha")]
    assert outcomes == (["server_error", "server_error", "accepted"] if endpoint == "submit"
                        else ["accepted"])  # fmt: skip
    charges = [r["cost"] for r in ledger(repo, "alpha") if r["outcome"] == "submit"]
    assert len(charges) == sim.post_requests  # a 5xx is never refunded: it may have been billed
    assert_verified(repo, sim, repo.status()["alpha"])


def test_submit_retries_are_capped(repo: Repo, sim: Simulator) -> None:
    """A submit that always answers 503 (retried on the user's word) stops after the capped
    attempts, pending with the reason."""
    cap = Tuning.from_env(FAST_ENV).submit_backoff.attempts
    repo.write("reconcile.yaml", "retries:\n  resubmitAfterServerError: true\n")
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.server_error(503), times=100)
    started = time.monotonic()
    result = apply(repo)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert sim.post_requests == cap and sim.paid_posts == 0
    assert elapsed < 15, elapsed  # capped exponential backoff, no spinning, no endless loop
    row = repo.status()["alpha"]
    assert row["state"] == "pending"
    assert "server error (503" in row["error"]
    assert "alpha: pending: server error (503" in result.stdout
    assert [r["outcome"] for r in attempts(repo, "alpha")] == ["server_error"] * cap
    assert repo.videos() == []


def test_connection_refused_is_retried_never_unknown(repo: Repo, sim: Simulator) -> None:
    """A submit that could not even connect sent nothing: left pending (not unknown), paid once later."""
    write_spec(repo, "alpha")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = apply(repo, RECONCILE_API_BASE=dead)
    assert result.returncode == 1
    row = repo.status()["alpha"]
    assert row["state"] == "pending" and "could not connect" in row["error"], row
    assert "alpha: pending: could not connect" in result.stdout
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 1 and sim.paid_posts == 1
    assert_verified(repo, sim, repo.status()["alpha"])


# -- the ambiguous POST: unknown, never resubmitted without the user's word ----------------------


def unknown_after_drop(repo: Repo, sim: Simulator) -> simmod.SimOperation:
    """Apply with the POST's answer lost; check it is parked as unknown and stays so."""
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.drop_after_accept())
    result = apply(repo)
    assert result.returncode == 1
    assert sim.post_requests == 1 and sim.paid_posts == 1
    assert "alpha: unknown:" in result.stdout and "may exist and be billed" in result.stdout
    row = repo.status()["alpha"]
    assert row["state"] == "unknown" and "may exist and be billed" in row["error"], row
    plan = json.loads(repo.run("plan", "--json").stdout)
    assert [(a["name"], a["action"]) for a in plan["actions"]] == [("alpha", "blocked")]
    again = apply(repo)
    assert again.returncode == 1
    assert sim.post_requests == 1, "a plain apply must never resubmit an unknown submission"
    assert repo.videos() == []
    (op,) = sim.operations.values()
    return op


def test_drop_after_accept_resubmit_unknown(repo: Repo, sim: Simulator) -> None:
    """An unanswered POST leaves `unknown`; only --resubmit-unknown pays again, with a warning."""
    unknown_after_drop(repo, sim)
    result = apply(repo, "--resubmit-unknown")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "may be paid twice" in result.stdout
    assert sim.post_requests == 2 and sim.paid_posts == 2
    assert_verified(repo, sim, repo.status()["alpha"])


def test_drop_after_accept_resolve_adopts_the_job(repo: Repo, sim: Simulator) -> None:
    """`reconcile resolve NAME --operation` adopts the lost job; the next apply polls it, no POST."""
    op = unknown_after_drop(repo, sim)
    resolved = repo.run("resolve", "alpha", "--operation", op.name)
    assert resolved.returncode == 0, resolved.stderr
    polls = sim.polls
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 1 and sim.paid_posts == 1
    assert sim.polls > polls
    row = repo.status()["alpha"]
    assert row["operation"] == op.name
    assert_verified(repo, sim, row)


def test_drop_before_accept_is_still_ambiguous(repo: Repo, sim: Simulator) -> None:
    """A POST dropped unanswered is `unknown` even when nothing was kept: the client cannot tell, only the user resubmits."""
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.drop_before_accept())
    result = apply(repo)
    assert result.returncode == 1
    assert sim.post_requests == 1 and sim.paid_posts == 0
    assert repo.status()["alpha"]["state"] == "unknown"
    assert apply(repo).returncode == 1
    assert sim.post_requests == 1
    # The provider has no job for it (nothing to resolve): the user's word resubmits, paid once.
    result = apply(repo, "--resubmit-unknown")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 2 and sim.paid_posts == 1
    assert_verified(repo, sim, repo.status()["alpha"])


# -- downloads -----------------------------------------------------------------------------------


def test_cut_download_is_retried_and_verifies(repo: Repo, sim: Simulator) -> None:
    """A download cut half-way is retried; the file verifies and no partial file is left anywhere."""
    write_spec(repo, "alpha")
    sim.inject("download", simmod.cut_download())
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.downloads == 2 and sim.paid_posts == 1 and sim.post_requests == 1
    assert_verified(repo, sim, repo.status()["alpha"])
    assert len(repo.videos()) == 1
    assert_no_partials(repo)


@pytest.mark.slow
def test_expired_file_fails_until_retry_failed(repo: Repo, sim: Simulator) -> None:
    """A video deleted remotely before download, past its keeping time, fails its spec clearly;
    only --retry-failed pays again."""
    write_spec(repo, "alpha")
    killed = apply(repo, **{failpoints.ENV: "after_succeeded:1"})
    assert killed.returncode == -signal.SIGKILL  # the operation is done, its video not downloaded
    sim.expire_files()
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn, conn:
        conn.execute("UPDATE generations SET remote_until = '2020-01-01T00:00:00Z'")
    result = apply(repo)
    assert result.returncode == 1
    assert sim.post_requests == 1
    row = repo.status()["alpha"]
    assert row["state"] == "failed"
    assert "deleted the video before it was downloaded (404, past its" in row["error"]
    assert "--retry-failed" in row["error"]
    assert "alpha: failed: the provider deleted the video" in result.stdout
    assert apply(repo).returncode == 1
    assert sim.post_requests == 1
    result = apply(repo, "--retry-failed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 2 and sim.paid_posts == 2
    assert_verified(repo, sim, repo.status()["alpha"])
    assert_no_partials(repo)


# -- response variants ---------------------------------------------------------------------------


def test_mixed_shapes_and_name_forms_converge(tmp_path: Path) -> None:
    """Both operation-name forms, both done shapes and an absent `done` in one run: all converge."""
    with Simulator(api_key=API_KEY, latency=0.1, name_form="mixed", done_shape="mixed",
                   omit_done=True, video="standin") as sim:  # fmt: skip
        repo = Repo(tmp_path / "mixed", sim)
        names = [f"clip{i}" for i in range(6)]
        for i, name in enumerate(names):
            write_spec(repo, name, f"Variant clip number {i}, a lighthouse in fog.")
        result = apply(repo)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sim.post_requests == 6 and sim.paid_posts == 6
        status = repo.status()
        forms = {row["operation"].startswith("models/") for row in status.values()}
        assert forms == {True, False}
        assert {op.done_shape for op in sim.operations.values()} == {"wrapped", "flat"}
        for row in status.values():
            assert_verified(repo, sim, row)


# -- final refusals: policy, filtered, failed operations ----------------------------------------


REFUSALS = {
    # name: (fault, the provider's words that status must show)
    "alpha": (simmod.content_policy(), "Content policy violation: the prompt was blocked"),
    "beta": (simmod.http_error(503, "Content policy violation"), "503: Content policy violation"),
    "gamma": (simmod.filtered(), "Veo could not generate 1 videos based on the prompt"),
}


def test_refusals_are_final_for_their_key(repo: Repo, sim: Simulator) -> None:
    """Policy refusals (400, GPTProto's 503) and filtered results stay final until the prompt changes or --retry-failed."""
    for name, (fault, _) in REFUSALS.items():
        write_spec(repo, name)
        sim.inject("submit", fault, prompt_contains=f"fault-test {name}")
    result = apply(repo)
    assert result.returncode == 1
    assert sim.post_requests == 3 and sim.paid_posts == 1  # only the filtered one was accepted
    assert "Apply incomplete: 3 failed" in result.stdout
    status = repo.status()
    for name, (_, reason) in REFUSALS.items():
        assert status[name]["state"] == "failed"
        assert reason in status[name]["error"], status[name]
        assert f"{name}: failed: {status[name]['error']}" in result.stdout

    assert apply(repo).returncode == 1
    assert sim.post_requests == 3

    # A changed prompt is a new key, submitted at once; the old key stays refused.
    write_spec(repo, "alpha", PROMPTS["alpha"].replace("red kite", "blue kite"))
    write_spec(repo, "gamma", PROMPTS["gamma"].replace("neon", "quiet"))
    result = apply(repo, "--target", "alpha", "--target", "gamma")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 5
    assert sim.posts_for("blue kite") == 1 and sim.posts_for("quiet city") == 1

    write_spec(repo, "alpha")  # back to the refused prompts: still final, nothing sent
    write_spec(repo, "gamma")
    assert apply(repo).returncode == 1
    assert sim.post_requests == 5

    result = apply(repo, "--retry-failed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 8
    # Each old key accepted once now (gamma's twice: its filtered operation was accepted too).
    originals = {"red kite": 1, "black volcanic": 1, "neon city": 2}
    assert {words: sim.posts_for(words) for words in originals} == originals
    for row in repo.status().values():
        assert_verified(repo, sim, row)


@pytest.mark.slow
def test_failed_operation_resubmitted_twice_across_runs(repo: Repo, sim: Simulator) -> None:
    """A failed operation is resubmitted at most twice for its key, counted across runs, then final."""
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.op_error(), times=5)
    # The run dies right after the first failure was recorded, before resubmitting.
    killed = apply(repo, **{failpoints.ENV: "before_claim:2"})
    assert killed.returncode == -signal.SIGKILL
    assert sim.paid_posts == 1
    assert repo.status()["alpha"]["state"] == "pending"
    result = apply(repo)
    assert result.returncode == 1
    assert sim.paid_posts == 3 and sim.post_requests == 3
    row = repo.status()["alpha"]
    assert row["state"] == "failed"
    assert "Video generation failed due to an internal error." in row["error"]
    assert "alpha: failed: Video generation failed" in result.stdout
    assert apply(repo).returncode == 1
    assert sim.post_requests == 3
    outcomes = [r["outcome"] for r in attempts(repo, "alpha")]
    assert outcomes.count("accepted") == 3 and outcomes.count("operation_failed") == 3


def test_failed_operation_retries_can_be_disabled(repo: Repo, sim: Simulator) -> None:
    """`retries: {operationFailed: 0}` makes the first failed operation final."""
    repo.write("reconcile.yaml", "retries:\n  operationFailed: 0\n")
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.op_error(), times=5)
    result = apply(repo)
    assert result.returncode == 1
    assert sim.paid_posts == 1 and sim.post_requests == 1
    assert repo.status()["alpha"]["state"] == "failed"
    assert "alpha: failed: Video generation failed" in result.stdout


# -- the account: wrong key, no balance ----------------------------------------------------------


def status_reason(cause: str) -> str:
    if cause == "wrong-key":
        return "the API key was refused (401: Invalid signature)"
    return "insufficient balance on the API account (403: Insufficient balance)"


@pytest.mark.parametrize("cause", ["wrong-key", "no-balance"])
def test_account_errors_stop_the_run(repo: Repo, sim: Simulator, cause: str) -> None:
    """401 or 403 "Insufficient balance" stops the run at once with what to fix; nothing is failed."""
    write_spec(repo, "alpha")
    write_spec(repo, "beta")
    env: dict[str, str] = {}
    if cause == "wrong-key":
        env["GPTPROTO_API_KEY"] = "sk-not-the-right-key"
        fix = "set GPTPROTO_API_KEY to a valid key"
    else:
        sim.inject("submit", simmod.http_error(403, "Insufficient balance", envelope="gptproto"))
        fix = "top it up"
    # One operation in flight, so "after the stop" is well defined.
    result = apply(repo, "--concurrency", "1", **env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert sim.post_requests == 1 and sim.paid_posts == 0
    # One message says what to fix; each spec's line points at it instead of repeating it.
    assert (result.stdout + result.stderr).count(fix) == 1, result.stdout + result.stderr
    assert f"Stopped: {status_reason(cause)}" in result.stdout
    assert "alpha: pending: not accepted" in result.stdout
    assert "beta: pending: not submitted" in result.stdout
    status = repo.status()
    assert status["alpha"]["state"] == "pending" and fix in status["alpha"]["error"]
    assert status["beta"]["state"] == "new"
    assert "failed" not in {row["state"] for row in status.values()}
    # Fixed (right key, topped up): the next apply submits both, once each.
    result = apply(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 2
    assert {r["state"] for r in repo.status().values()} == {"materialized"}


def test_one_permanent_failure_never_stops_the_others(repo: Repo, sim: Simulator) -> None:
    """One spec refused for good, the others still materialize; exit 1 and the summary says why."""
    for name in PROMPTS:
        write_spec(repo, name)
    sim.inject("submit", simmod.http_error(400, "Request contains an invalid argument."),
               prompt_contains="fault-test beta")  # fmt: skip
    result = apply(repo)
    assert result.returncode == 1
    assert sim.post_requests == 3 and sim.paid_posts == 2
    assert "Apply incomplete: 1 failed, 2 materialized" in result.stdout
    assert "beta: failed: rejected (400: Request contains an invalid argument.)" in result.stdout
    status = repo.status()
    assert status["beta"]["state"] == "failed"
    for name in ("alpha", "gamma"):
        assert_verified(repo, sim, status[name])
    assert len(repo.videos()) == 2


# -- secrets -------------------------------------------------------------------------------------


def test_redirected_download_gets_no_key_and_key_is_nowhere(tmp_path: Path) -> None:
    """A redirected download reaches the second host without the key; the key is in no file and no output."""
    with Simulator(api_key=API_KEY, latency=0.1, redirect_host="127.0.0.2") as sim:
        repo = Repo(tmp_path / "secrets", sim)
        write_spec(repo, "alpha")
        sim.inject("download", simmod.redirect())
        outputs = [apply(repo), repo.run("status"), repo.run("status", "--json"),
                   repo.run("plan", "--json")]  # fmt: skip
        assert outputs[0].returncode == 0, outputs[0].stdout + outputs[0].stderr
        assert_verified(repo, sim, repo.status()["alpha"])
        (moved,) = sim.redirect_requests
        assert moved.host == "127.0.0.2" and moved.method == "GET"
        assert "x-goog-api-key" not in moved.headers
        assert API_KEY not in json.dumps(moved.headers)
        assert all(r.headers.get("x-goog-api-key") == API_KEY for r in sim.requests)
        assert_key_nowhere(repo, outputs)


# -- timeouts ----------------------------------------------------------------------------------


@pytest.mark.slow  # over 4 s of retries and waits: out of the dev loop
def test_submit_timeout_is_unknown_poll_timeout_is_retried(repo: Repo, sim: Simulator) -> None:
    """A POST whose answer never comes in time may have been accepted: unknown, never resubmitted
    by itself; a poll that times out is just retried."""
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.stall(4.0))
    result = apply(repo, RECONCILE_HTTP_TIMEOUT="1")  # the POST gets twice the timeout: 2 s
    assert result.returncode == 1
    assert repo.status()["alpha"]["state"] == "unknown"
    assert "ReadTimeout" in repo.status()["alpha"]["error"]
    assert sim.paid_posts == 1
    assert apply(repo, RECONCILE_HTTP_TIMEOUT="1").returncode == 1
    assert sim.post_requests == 1
    (op,) = sim.operations.values()
    assert repo.run("resolve", "alpha", "--operation", op.name).returncode == 0
    sim.inject("poll", simmod.stall(2.0), times=2)
    result = apply(repo, RECONCILE_HTTP_TIMEOUT="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.post_requests == 1
    assert_verified(repo, sim, repo.status()["alpha"])


def test_daily_quota_ends_the_run_instead_of_sleeping(repo: Repo, sim: Simulator) -> None:
    """A 429 asking for hours is not slept through: the spec stays pending, the run ends at once."""
    write_spec(repo, "alpha")
    sim.inject("submit", simmod.rate_limited(6 * 3600))
    started = time.monotonic()
    result = apply(repo)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "left pending for a later run" in result.stderr
    assert repo.status()["alpha"]["state"] == "pending"
    assert sim.paid_posts == 0
    assert apply(repo).returncode == 0
    assert sim.paid_posts == 1


def test_a_long_hold_leaves_every_waiting_spec_pending_not_unknown(
    repo: Repo, sim: Simulator
) -> None:
    """After a daily-quota 429 the other specs are not claimed and left asleep: the run ends at
    once with all of them pending, never unknown, and a later run submits each once."""
    for name in PROMPTS:
        write_spec(repo, name)
    sim.inject("submit", simmod.rate_limited(6 * 3600), prompt_contains="alpha")
    started = time.monotonic()
    result = apply(repo, "--concurrency", "1")
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert {r["state"] for r in repo.status().values()} <= {"pending", "new"}
    assert sim.post_requests == 1 and sim.paid_posts == 0
    assert apply(repo).returncode == 0
    assert sim.paid_posts == 3


@pytest.mark.slow
def test_stop_while_waiting_for_the_pacer_leaves_nothing_unknown(
    repo: Repo, sim: Simulator
) -> None:
    """With submitPerMinute capping the rate, SIGINT while specs wait their turn leaves them
    unclaimed (never unknown); the next run submits them."""
    for name in PROMPTS:
        write_spec(repo, name)
    repo.write("reconcile.yaml", "limits:\n  submitPerMinute: 2\n")
    sim.set_latency(30.0)
    proc = repo.spawn_apply(env=repo.env(**FAST_ENV))
    deadline = time.monotonic() + 20
    while sim.paid_posts < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert sim.post_requests == 1
    states = sorted(r["state"] for r in repo.status().values())
    assert states == ["new", "new", "running"], states
    sim.set_latency(0.1)
    repo.write("reconcile.yaml", "")
    assert apply(repo).returncode == 0
    assert sim.paid_posts == 3
