"""A team on one PostgreSQL: choosing the state store, and working trees that share it.

Two working trees (two folders, each with its own ``state/`` for outputs and cached bytes) point
at one database, the way two clones on two machines would, through ``state:`` in reconcile.yaml
for one and ``RECONCILE_STATE`` for the other. Each end-to-end test counts what the simulator was
paid: sharing the state must make it once per video, whoever applies.
"""

from __future__ import annotations

import dataclasses
import signal

import pytest
from conftest import API_KEY, Repo, assert_key_nowhere
from pg import db_rows, text_columns_holding, wait_running

from reconciler.sim import Simulator

SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n"


def specs(repo: Repo, count: int) -> None:
    for i in range(count):
        repo.write(f"specs/s{i}.yaml", SPEC.format(name=f"s{i}", prompt=f"Team clip {i}."))


def tree(repo: Repo, name: str, count: int) -> Repo:
    """Another working tree of the same asset repo (same specs), with a state/ of its own."""
    other = dataclasses.replace(repo, path=repo.path.parent / name)
    (other.path / "specs").mkdir(parents=True)
    specs(other, count)
    return other


def shared_env(repo: Repo, url: str) -> dict[str, str]:
    return repo.env(RECONCILE_STATE=url)


# -- choosing the store --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("postgresql://alice:hunter2@db.example/videos", "holds a password"),
        ("postgresql://db.example/videos?password=hunter2", "holds a password"),
        ("postgresql://db.example/videos?sslpassword=hunter2", "holds a password"),
        # libpq reads the user part up to the first @: this password holds a ? (and a #)
        ("postgresql://alice:pa?hunter2@db.example/videos", "holds a password"),
        ("postgresql://alice:pa#hunter2@db.example/videos", "holds a password"),
        ("mysql://db.example/videos", "must be a PostgreSQL URL"),
    ],
)
def test_a_state_url_with_a_password_or_another_scheme_is_refused(
    offline_repo: Repo, value: str, problem: str
) -> None:
    """reconcile.yaml is committed: a password in `state:` is refused, pointing at libpq's own
    ways to pass one, and the password is not repeated back."""
    offline_repo.write("reconcile.yaml", f"state: {value}\n")
    result = offline_repo.run("plan")
    assert result.returncode == 1
    assert f"reconcile.yaml:1: state: {problem}" in result.stderr, result.stderr
    if "password" in problem:
        assert "PGPASSWORD" in result.stderr and ".pgpass" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout


def test_a_bad_state_url_in_the_environment_names_the_variable(offline_repo: Repo) -> None:
    result = offline_repo.run("plan", env=offline_repo.env(RECONCILE_STATE="sqlite:///x.db"))
    assert result.returncode == 1 and "RECONCILE_STATE: must be a PostgreSQL URL" in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:pa?hunter2@127.0.0.1:1/videos",
        "postgresql://alice:hun%zzter2@127.0.0.1:1/videos",
        "postgresql://127.0.0.1:1/videos?password=a%zzhunter2",
        "postgresql://alice:hunter2@127.0.0.1:1/videos?sslpassword=hunter2",
    ],
)
def test_no_piece_of_a_password_in_the_environment_is_ever_shown(
    offline_repo: Repo, url: str
) -> None:
    """CI masks a secret only whole: neither the store's label nor libpq's complaint about a
    badly encoded URL may show a piece of it."""
    pytest.importorskip("psycopg")
    offline_repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Local."))
    result = offline_repo.run("status", env=offline_repo.env(RECONCILE_STATE=url))
    assert result.returncode == 1
    assert "hunter" not in result.stdout + result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_set_but_empty_state_variable_is_refused(offline_repo: Repo) -> None:
    """An empty RECONCILE_STATE is a missing CI secret, not a wish for a runner's own sqlite db
    (which would see none of the team's operations in flight, and pay for them again)."""
    offline_repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Local."))
    result = offline_repo.run("plan", env=offline_repo.env(RECONCILE_STATE=" "))
    assert result.returncode == 1
    assert "RECONCILE_STATE is set but empty" in result.stderr, result.stderr


def test_status_names_the_local_state_store(offline_repo: Repo) -> None:
    """The default needs no setting, and status says where state lives; the --sim sandbox keeps
    its own local state even when a shared one is configured (it never connects to it)."""
    offline_repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Local."))
    result = offline_repo.run("status")
    assert result.returncode == 0, result.stderr
    assert "State: state/reconciler.db (sqlite)" in result.stdout
    env = offline_repo.env(RECONCILE_STATE="postgresql://nowhere.invalid/videos")
    sandbox = offline_repo.run("status", "--sim", env=env)
    assert sandbox.returncode == 0, sandbox.stderr
    assert "State: state/sim/reconciler.db (sqlite)" in sandbox.stdout


def test_read_only_commands_create_nothing_and_the_environment_wins(
    offline_repo: Repo, pg_url: str
) -> None:
    """`plan` and `status` against an empty database leave it empty; RECONCILE_STATE wins over
    reconcile.yaml's `state:` (here a host that does not exist), and status names it."""
    offline_repo.write("reconcile.yaml", "state: postgresql://nowhere.invalid/videos\n")
    offline_repo.write("specs/a.yaml", SPEC.format(name="a", prompt="Shared."))
    env = shared_env(offline_repo, pg_url)
    plan = offline_repo.run("plan", env=env)
    assert plan.returncode == 0 and "create" in plan.stdout, plan.stderr
    status = offline_repo.run("status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"State: {pg_url}" in status.stdout
    assert db_rows(pg_url, "SELECT 1 FROM pg_namespace WHERE nspname = 'reconciler'") == []
    unreachable = offline_repo.run("status")
    assert unreachable.returncode == 1
    assert "Error: the state database postgresql://nowhere.invalid/videos" in unreachable.stderr


# -- two working trees, one database ----------------------------------------------------------


@pytest.mark.slow
def test_two_trees_racing_apply_pay_once_and_both_converge(
    repo: Repo, sim: Simulator, pg_url: str
) -> None:
    """Two trees applying the same eight specs at once: eight POSTs in all, every spec
    materialized in both, the same lock in both, and the API key in no column of the database."""
    count = 8
    specs(repo, count)
    repo.write("reconcile.yaml", f"state: {pg_url}\n")
    other = tree(repo, "other-tree", count)
    procs = [repo.spawn_apply(), other.spawn_apply(env=shared_env(other, pg_url))]
    outputs = [proc.communicate(timeout=90) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
    assert sim.paid_posts == count
    for each in (repo, other):
        status = _status(each, pg_url)
        assert {row["state"] for row in status.values()} == {"materialized"}, status
        assert len(each.videos()) == count
    assert (repo.path / "reconcile.lock").read_text() == (other.path / "reconcile.lock").read_text()
    assert text_columns_holding(pg_url, API_KEY) == []
    assert len(db_rows(pg_url, "SELECT 1 FROM reconciler.attempts WHERE outcome = 'submit'")) == 8
    assert_key_nowhere(repo, [])
    assert_key_nowhere(other, [])


def _status(repo: Repo, url: str) -> dict[str, dict[str, object]]:
    import json

    result = repo.run("status", "--json", env=shared_env(repo, url))
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.mark.slow
def test_a_daily_budget_is_one_budget_for_the_whole_team(
    repo: Repo, sim: Simulator, pg_url: str
) -> None:
    """Two trees each applying three other specs under a budget.perDay that pays for three
    videos in all: each plan fits on its own, and the claims, checked against the shared ledger
    inside their transactions, let three POSTs through, never one more."""
    specs(repo, 6)
    budget = "budget:\n  perDay: 2.40\n"
    repo.write("reconcile.yaml", f"state: {pg_url}\n{budget}")
    other = tree(repo, "other-tree", 6)
    other.write("reconcile.yaml", budget)
    targets = [("--target", f"s{i}") for i in range(6)]
    procs = [
        repo.spawn_apply(*[arg for t in targets[:3] for arg in t]),
        other.spawn_apply(*[arg for t in targets[3:] for arg in t], env=shared_env(other, pg_url)),
    ]
    for proc in procs:
        proc.communicate(timeout=90)
    assert sim.paid_posts == 3
    assert db_rows(pg_url, "SELECT sum(cost) FROM reconciler.attempts") == [(pytest.approx(2.4),)]


@pytest.mark.slow
def test_a_killed_apply_is_resumed_by_a_fresh_tree_without_a_new_post(
    repo: Repo, sim: Simulator, pg_url: str
) -> None:
    """SIGKILL one tree's apply once its POSTs reached the simulator and their operations were
    recorded; a fresh tree elsewhere polls and downloads them: no new POST, all materialized."""
    sim.set_latency(3.0)
    specs(repo, 2)
    env = shared_env(repo, pg_url)
    proc = repo.spawn_apply(env=env)
    try:
        repo.wait_for_posts(2)
        wait_running(pg_url, 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    fresh = tree(repo, "fresh-tree", 2)
    result = fresh.apply(env=shared_env(fresh, pg_url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 2
    assert {row["state"] for row in _status(fresh, pg_url).values()} == {"materialized"}
    again = repo.apply(env=env)  # the killed tree, too, catches up for free
    assert again.returncode == 0 and sim.paid_posts == 2
    assert len(repo.videos()) == len(fresh.videos()) == 2
