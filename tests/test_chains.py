"""Chains of specs (`video: {from: NAME}`), end to end and as pure rules: keys, order, blocking,
expired sources, the combined length, and what the lock and status say of each provider copy.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import API_KEY, Repo

from reconciler import chains
from reconciler import sim as simmod
from reconciler.config import Config
from reconciler.loader import load_specs
from reconciler.sim import Simulator
from reconciler.spec import Desired, spec_key

MODEL = "veo-3.1-fast-generate-preview"
FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}


def desired(name: str, source: str | None = None, **params: object) -> Desired:
    spec = Desired(
        name=name, file=f"specs/{name}.yaml", line=1, model=MODEL, prompt=f"{name} prompt",
        parameters={"aspectRatio": "16:9", "resolution": "720p", "durationSeconds": 8,
                    "enhancePrompt": True, "personGeneration": None, "negativePrompt": None,
                    **params},
        source=source,
    )  # fmt: skip
    return replace(spec, key=spec_key(spec))


# -- pure rules --------------------------------------------------------------------------------


def test_a_childs_key_includes_its_sources_key() -> None:
    """Changing a chain's root changes every key built on it; the rest keep theirs."""
    specs = [desired("base"), desired("mid", "base"), desired("top", "mid"), desired("other")]
    keyed, problems = chains.resolve(specs)
    assert problems == []
    base = replace(specs[0], prompt="base prompt, edited")
    edited = [replace(base, key=spec_key(base)), *specs[1:]]
    rekeyed, _ = chains.resolve(edited)
    before = {d.name: d.key for d in keyed}
    after = {d.name: d.key for d in rekeyed}
    assert [n for n in before if before[n] != after[n]] == ["base", "mid", "top"]
    by_name = {d.name: d for d in keyed}
    assert (by_name["top"].depth, by_name["top"].length) == (2, 8 + 7 + 7)
    assert by_name["mid"].source_key == by_name["base"].key
    assert chains.descendants(keyed, "base") == ["mid", "top"]


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        ([desired("a", "b"), desired("b", "a")], "a → b → a is a cycle (specs/a.yaml, specs/b.yaml)"),
        ([desired("a", "a")], "a → a is a cycle (specs/a.yaml)"),
        ([desired("a", "ghost")], "no valid spec named 'ghost' to extend"),
        ([desired("base", resolution="1080p"), desired("a", "base")], "is 1080p; an extension needs a 720p source"),
        ([desired("base", aspectRatio="9:16"), desired("a", "base")], "aspectRatio must match its source 'base' (9:16"),
    ],
    ids=["cycle", "self", "unknown", "not-720p", "aspect"],
)  # fmt: skip
def test_a_chain_the_api_would_refuse_is_a_problem_naming_the_files(
    specs: list[Desired], words: str
) -> None:
    """Cycles, unknown sources and sources the API cannot extend are refused before anything."""
    _, problems = chains.resolve(specs)
    assert any(words in p.message for p in problems), problems


def test_chains_deeper_than_twenty_or_longer_than_141s_are_refused() -> None:
    """The 21st extension in a row, or one of a source past 141 s, is refused up front."""
    specs = [desired("s0")] + [desired(f"s{i}", f"s{i - 1}") for i in range(1, 23)]
    keyed, problems = chains.resolve(specs)
    said = {p.file: p.message for p in problems}
    assert "specs/s20.yaml" not in said  # 20 deep, from a source of 8 + 19 × 7 = 141 s
    assert {s.name for s in keyed} == {f"s{i}" for i in range(21)}
    assert "extension number 21 in a row; the API allows 20" in said["specs/s21.yaml"]
    assert "invalid" in said["specs/s22.yaml"]


# -- end to end against the simulator ------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=API_KEY, latency=0.2, video="standin") as server:
        yield server


def chain(repo: Repo, root_prompt: str = "A forest at dawn.") -> None:
    repo.write("specs/base.yaml", f"name: base\nmodel: {MODEL}\nprompt: {root_prompt}\n")
    repo.write(
        "specs/mid.yaml", f"name: mid\nmodel: {MODEL}\nprompt: Rising.\nvideo: {{from: base}}\n"
    )
    repo.write(
        "specs/top.yaml", f"name: top\nmodel: {MODEL}\nprompt: Higher.\nvideo: {{from: mid}}\n"
    )


def test_a_three_level_chain_builds_in_order_and_a_root_change_rebuilds_all(
    repo: Repo, sim: Simulator
) -> None:
    """Each extension is sent with its source's provider URI once the source has succeeded; a
    change at the root re-plans the three with their costs, and rebuilds them."""
    chain(repo)
    plan = repo.run("plan")
    assert "$0.70" in plan.stdout  # an extension generates about 7 s
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 3
    posts = [r for r in sim.requests if r.method == "POST"]
    assert [("video" in r.json["instances"][0]) for r in posts] == [False, True, True]
    base_op, _mid_op = (
        op for op in sim.operations.values() if op.prompt in ("A forest at dawn.", "Rising.")
    )
    assert base_op.file_id in posts[1].json["instances"][0]["video"]["uri"]
    lengths = {name: row for name, row in repo.status().items()}
    assert lengths["top"]["source"] == "mid" and lengths["top"]["uri"] and lengths["top"]["expires"]
    assert repo.run("verify").returncode == 0  # top is 8 + 7 + 7 s long
    chain(repo, "A forest at dusk.")
    replan = repo.run("plan")
    assert replan.stdout.count("  replace  ") == 3 and "its source `base` changed" in replan.stdout
    assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 0
    assert sim.paid_posts == 6


def test_a_failed_source_blocks_its_extensions_and_they_cost_nothing(
    repo: Repo, sim: Simulator
) -> None:
    """A source refused by content policy leaves its chain blocked (not failed), unpaid."""
    chain(repo)
    sim.inject("submit", simmod.content_policy(), prompt_contains="forest")
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 1
    assert sim.paid_posts == 0 and sim.post_requests == 1
    assert "mid: blocked: its source `base` is failed" in result.stdout
    assert "top: blocked" in result.stdout


def test_an_expired_source_is_reported_with_its_way_out_and_costs_nothing(
    repo: Repo, sim: Simulator
) -> None:
    """A source whose provider copy is gone cannot be extended from cached bytes: plan and apply
    say so and name `--replace`, and nothing is paid for the source silently."""
    repo.write("specs/base.yaml", f"name: base\nmodel: {MODEL}\nprompt: A forest.\n")
    assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 0
    old = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with closing(sqlite3.connect(repo.path / "state" / "reconciler.db")) as conn, conn:
        conn.execute("UPDATE generations SET remote_until = ?", [old])
    repo.write(
        "specs/mid.yaml", f"name: mid\nmodel: {MODEL}\nprompt: Rising.\nvideo: {{from: base}}\n"
    )
    plan = repo.run("plan")
    assert "--replace base" in plan.stdout and "blocked" in plan.stdout
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 1 and sim.paid_posts == 1
    assert "--replace base" in result.stdout


def test_the_lock_carries_each_videos_provider_copy(repo: Repo, sim: Simulator) -> None:
    """A fresh clone knows a source's provider URI and expiry from the lock alone, and extends
    it without paying for the source again."""
    repo.write("specs/base.yaml", f"name: base\nmodel: {MODEL}\nprompt: A forest.\n")
    assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 0
    lock = (repo.path / "reconcile.lock").read_text()
    assert "uri:" in lock and "expires:" in lock
    import shutil

    fresh = Repo(repo.path.parent / "fresh", sim)
    shutil.copytree(repo.path, fresh.path, ignore=shutil.ignore_patterns("state"))
    fresh.write(
        "specs/mid.yaml", f"name: mid\nmodel: {MODEL}\nprompt: Rising.\nvideo: {{from: base}}\n"
    )
    result = fresh.apply(env=fresh.env(**FAST_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 2


@pytest.mark.slow
def test_the_example_specs_run_against_apply_sim(offline_repo: Repo) -> None:
    """Every example in this repo's specs/ (text, image, chain) converges with `apply --sim`."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    shutil.rmtree(offline_repo.path / "specs")
    for folder in ("specs", "assets"):
        shutil.copytree(root / folder, offline_repo.path / folder)
    shutil.copy(root / "reconcile.yaml", offline_repo.path)
    result = offline_repo.run("apply", "--sim", "--yes", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hero-extended" in result.stdout and "Apply complete" in result.stdout


def test_loading_a_repo_resolves_chains_across_files(tmp_path: Path) -> None:
    """A chain spans files: the child's file names its source by name, wherever that is."""
    (tmp_path / "specs" / "deep").mkdir(parents=True)
    (tmp_path / "specs" / "deep" / "top.yaml").write_text(
        f"name: top\nmodel: {MODEL}\nprompt: Up.\nvideo: {{from: base}}\n"
    )
    (tmp_path / "specs" / "base.yaml").write_text(f"name: base\nmodel: {MODEL}\nprompt: Down.\n")
    result = load_specs(tmp_path, Config())
    assert result.problems == []
    top = next(s for s in result.specs if s.name == "top")
    assert top.source_key == next(s.key for s in result.specs if s.name == "base")
    assert json.loads(json.dumps(top.canonical()))["video"] == {"from": top.source_key}


@pytest.mark.slow
def test_the_example_specs_run_against_reconcile_sim(offline_repo: Repo) -> None:
    """Every example also converges against `reconcile sim` in another process (no foreign
    sources: the chain extends the simulator's own file)."""
    import re
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    shutil.rmtree(offline_repo.path / "specs")
    for folder in ("specs", "assets"):
        shutil.copytree(root / folder, offline_repo.path / folder)
    server = offline_repo.spawn("sim", "--port", "0", "--latency", "0.5", "--api-key", API_KEY,
                                stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        base = re.search(r"http://[\d.]+:\d+", line)
        assert base, line
        env = offline_repo.env(RECONCILE_API_BASE=base.group(0), GPTPROTO_API_KEY=API_KEY)
        result = offline_repo.run("apply", "--yes", "--poll-interval", "0.2", env=env, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Apply complete: 6 materialized" in result.stdout
    finally:
        server.terminate()
        server.communicate(timeout=10)
