"""Exactly-once through SIGKILL: kill `reconcile apply` at named points and at random moments,
then converge, and check that every distinct spec was paid for exactly once."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from contextlib import closing

import pytest
import yaml
from conftest import Repo

from reconciler import failpoints
from reconciler.sim import Simulator, stall

# Every test here kills or signals a real `reconcile apply` process.
pytestmark = pytest.mark.slow

SPECS = {
    "alpha": "A red kite flying over green hills, crash-test alpha.",
    "beta": "Waves breaking on black volcanic sand, crash-test beta.",
    "gamma": "A neon city street in the rain at night, crash-test gamma.",
}


def write_specs(repo: Repo) -> None:
    for name, prompt in SPECS.items():
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          f"prompt: {prompt}\n")  # fmt: skip


def converge(repo: Repo, sim: Simulator) -> None:
    """Finish as a user would: apply; adopt the job of an unknown spec if the provider has one
    (`reconcile resolve`), or resubmit it if it has none; apply again."""
    result = repo.apply()
    for name, row in repo.status().items():
        if row["state"] != "unknown":
            continue
        found = [op for op in sim.operations.values() if op.prompt == SPECS[name]]
        if found:
            resolved = repo.run("resolve", name, "--operation", found[0].name)
            assert resolved.returncode == 0, resolved.stderr
        else:
            resubmit = repo.apply("--resubmit-unknown", "--target", name)
            assert resubmit.returncode == 0, resubmit.stderr
    result = repo.apply()
    assert result.returncode == 0, result.stdout + result.stderr


def check_invariants(repo: Repo, sim: Simulator) -> None:
    for name, prompt in SPECS.items():
        assert sim.posts_for(prompt) == 1, (name, sim.posts_for(prompt))
    status = repo.status()
    assert {row["state"] for row in status.values()} == {"materialized"}, status
    import hashlib

    for row in status.values():
        data = (repo.path / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    lock = yaml.safe_load((repo.path / "reconcile.lock").read_text())
    assert sorted(lock["specs"]) == sorted(SPECS)
    assert {e["path"] for e in lock["specs"].values()} == {r["path"] for r in status.values()}
    assert sorted(repo.videos()) == sorted(r["path"].split("/")[-1] for r in status.values())
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert repo.run("plan", "--detailed-exitcode").returncode == 0


@pytest.mark.parametrize("point", failpoints.POINTS)
def test_sigkill_at_named_points_pays_once(repo: Repo, point: str) -> None:
    """SIGKILL at each named point, on its 1st, 2nd and 3rd pass, then converge: one POST per spec."""
    assert repo.sim is not None
    write_specs(repo)
    kills = 0
    for nth in (1, 2, 3):
        env = repo.env(**{failpoints.ENV: f"{point}:{nth}"})
        result = repo.apply(env=env)
        if result.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert result.returncode in (0, 1), result.stderr
    assert kills >= 1, f"{point} was never reached"
    converge(repo, repo.sim)
    check_invariants(repo, repo.sim)


def test_sigkill_at_random_moments_pays_once(repo: Repo) -> None:
    """SIGKILL at twelve random moments across submits, polls and downloads, then converge."""
    assert repo.sim is not None
    repo.sim.set_latency(1.0)
    write_specs(repo)
    rng = random.Random(20261125)
    for _ in range(12):
        proc = repo.spawn("apply", "--yes", "--poll-interval", "0.1",
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.3, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    converge(repo, repo.sim)
    check_invariants(repo, repo.sim)


def test_sigterm_stops_within_two_seconds_and_resumes(repo: Repo) -> None:
    """SIGTERM mid-apply exits non-zero within 2 s naming what still runs; the next run resumes it."""
    assert repo.sim is not None
    repo.sim.set_latency(30.0)
    write_specs(repo)
    proc = repo.spawn_apply(poll="0.2")
    repo.wait_for_posts(3)
    time.sleep(0.3)  # let the operation names be committed and polling start
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: stopping" in err
    for name in SPECS:
        assert f"{name}: running" in out, out
    assert {r["state"] for r in repo.status().values()} == {"running"}

    repo.sim.set_latency(0.2)
    result = repo.apply()
    assert result.returncode == 0, result.stderr
    assert repo.sim.paid_posts == 3
    check_invariants(repo, repo.sim)


def test_stop_with_a_post_on_the_wire(repo: Repo) -> None:
    """SIGINT while a POST waits for its answer still exits within 2 s: the spec is recorded as
    `unknown` (the job may exist), and `reconcile resolve` adopts it without paying again."""
    assert repo.sim is not None
    repo.write("specs/alpha.yaml", f"name: alpha\nmodel: veo-3.1-fast-generate-preview\n"
                                   f"prompt: {SPECS['alpha']}\n")  # fmt: skip
    repo.sim.inject("submit", stall(30.0))
    proc = repo.spawn_apply(poll="0.2")
    repo.wait_for_posts(1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 128 + signal.SIGINT
    assert "alpha: unknown" in out
    status = repo.status()["alpha"]
    assert status["state"] == "unknown" and "may exist" in status["error"]

    assert repo.apply().returncode == 1  # never resubmitted by itself
    assert repo.sim.paid_posts == 1
    op = next(iter(repo.sim.operations.values()))
    assert repo.run("resolve", "alpha", "--operation", op.name).returncode == 0
    assert repo.apply().returncode == 0
    assert repo.sim.paid_posts == 1
    assert repo.status()["alpha"]["state"] == "materialized"


def test_second_signal_exits_at_once(repo: Repo) -> None:
    """A second SIGINT does not wait for the stop grace; what was committed is resumed later."""
    assert repo.sim is not None
    repo.sim.set_latency(30.0)
    write_specs(repo)
    proc = repo.spawn_apply(poll="0.2")
    repo.wait_for_posts(3)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert time.monotonic() - sent < 0.5
    # Either our handler's exit(130) or, if the signal lands during interpreter shutdown, death
    # by SIGINT: a shell shows 130 for both.
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT)
    repo.sim.set_latency(0.2)
    assert repo.apply().returncode == 0
    assert repo.sim.paid_posts == 3


def test_status_json_of_unknown_after_kill(repo: Repo) -> None:
    """A kill between the claim and the provider's answer leaves `unknown`, shown by plan and status
    and never resubmitted by a plain apply."""
    assert repo.sim is not None
    write_specs(repo)
    env = repo.env(**{failpoints.ENV: "after_post:1"})
    # One operation in flight, so exactly one POST is on the wire when the process dies.
    assert repo.apply("--concurrency", "1", env=env).returncode == -signal.SIGKILL
    assert repo.sim.paid_posts == 1
    result = repo.apply()
    assert result.returncode == 1
    unknown = [n for n, r in repo.status().items() if r["state"] == "unknown"]
    assert len(unknown) == 1
    assert "may exist and be billed" in repo.status()[unknown[0]]["error"]
    plan = json.loads(repo.run("plan", "--json").stdout)
    assert {a["name"]: a["action"] for a in plan["actions"]}[unknown[0]] == "blocked"
    assert repo.apply().returncode == 1
    assert repo.sim.paid_posts == 3
