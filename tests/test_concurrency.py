"""Several processes on one state db: racing applies never double-submit, readers never fail."""

from __future__ import annotations

import json
import subprocess

from conftest import Repo

N_SPECS = 24


def write_many(repo: Repo) -> dict[str, str]:
    prompts = {}
    for i in range(N_SPECS):
        name = f"clip-{i:02d}"
        prompts[name] = f"Race test clip number {i:02d}, a paper boat on a pond."
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          f"prompt: {prompts[name]}\n")  # fmt: skip
    return prompts


def start_apply(repo: Repo, *extra: str) -> subprocess.Popen[str]:
    return repo.spawn_apply("--concurrency", "8", *extra)


def test_three_racing_applies_pay_once_and_readers_keep_working(repo: Repo) -> None:
    """Three applies started together on 24 specs: 24 paid POSTs in all; status and plan never fail."""
    assert repo.sim is not None
    repo.sim.set_latency(0.5)
    prompts = write_many(repo)
    procs = [start_apply(repo) for _ in range(3)]
    reads = 0
    while any(p.poll() is None for p in procs):
        status = repo.run("status", "--json")
        assert status.returncode == 0, status.stderr
        assert "locked" not in status.stderr
        json.loads(status.stdout)
        plan = repo.run("plan", "--json")
        assert plan.returncode == 0, plan.stderr
        reads += 1
    assert reads >= 1
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == N_SPECS
    for prompt in prompts.values():
        assert repo.sim.posts_for(prompt) == 1
    rows = repo.status()
    assert len(rows) == N_SPECS and {r["state"] for r in rows.values()} == {"materialized"}
    assert len(repo.videos()) == N_SPECS
    assert repo.run("plan", "--detailed-exitcode").returncode == 0


def test_late_apply_follows_running_operations(repo: Repo) -> None:
    """An apply started while another's operations run polls them instead of submitting again."""
    assert repo.sim is not None
    repo.sim.set_latency(2.0)
    write_many(repo)
    first = start_apply(repo)
    repo.wait_for_posts(N_SPECS)
    second = start_apply(repo)
    for proc in (first, second):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == N_SPECS


def test_shared_key_and_racing_processes_never_rewind_a_resubmission(repo: Repo) -> None:
    """A failed operation is resubmitted once, even when two names share its key and two
    processes poll it: a late poll of the old operation must not rewind the new one."""
    from reconciler.sim import op_error

    assert repo.sim is not None
    repo.sim.set_latency(0.5)
    prompt = "Shared key clip, a lantern on a quiet river."
    for name in ("a", "b"):
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          f"prompt: {prompt}\n")  # fmt: skip
    repo.sim.inject("submit", op_error(), times=1)
    procs = [start_apply(repo) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    assert repo.sim.paid_posts == 2  # the failed operation (not billed) and its one resubmission
    rows = repo.status()
    assert rows["a"]["sha256"] == rows["b"]["sha256"]
    assert rows["a"]["operation"] == rows["b"]["operation"]


def test_replace_on_names_sharing_a_key_pays_once(repo: Repo) -> None:
    """--replace of two names with one key makes one new generation, as the plan's cost says."""
    assert repo.sim is not None
    for name in ("a", "b"):
        repo.write(f"specs/{name}.yaml", f"name: {name}\nmodel: veo-3.1-fast-generate-preview\n"
                                          "prompt: Same clip under two names.\n")  # fmt: skip
    assert repo.apply().returncode == 0
    assert repo.sim.paid_posts == 1
    plan = json.loads(repo.run("plan", "--json", "--replace", "a", "--replace", "b").stdout)
    assert plan["cost_usd"] == 0.8
    result = repo.apply("--replace", "a", "--replace", "b", "--concurrency", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert repo.sim.paid_posts == 2
