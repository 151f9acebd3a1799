"""What people see: field diffs of a replace, saved plans, the pull-request comment, the apply
summary, takes and pins, and the team's daily commands (init, cost, gc's names).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import API_KEY, Repo, png_bytes

from reconciler import diffs
from reconciler.sim import Simulator

SPEC = "name: hero\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n{extra}"
PROMPT = "Slow drone shot over a misty pine forest at sunrise, soft golden light through the fog."
FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=API_KEY, latency=0.1, video="standin") as server:
        yield server


def write(repo: Repo, prompt: str = PROMPT, extra: str = "") -> None:
    repo.write("specs/hero.yaml", SPEC.format(prompt=prompt, extra=extra))


def apply(repo: Repo, *args: str):  # type: ignore[no-untyped-def]
    return repo.apply(*args, env=repo.env(**FAST_ENV))


# -- field diffs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ({"prompt": "a b c d e f g h i j"}, {"prompt": "a b c d e X g h i j"},
         "prompt: … b c d e [-f-] {+X+} g h i j"),
        ({"resolution": "720p"}, {"resolution": "1080p"}, "resolution: 720p → 1080p"),
        ({"seed": 1}, {}, "seed: 1 → (unset)"),
        ({"image": {"path": "a.png", "sha256": "1" * 64}},
         {"image": {"path": "a.png", "sha256": "2" * 64}},
         f"image: image bytes changed ({'1' * 16} → {'2' * 16})"),
        ({"video": {"from": "base", "key": "k1"}}, {"video": {"from": "base", "key": "k2"}},
         "video: its source `base` changed"),
    ],
    ids=["prompt-word", "resolution", "unset", "image-bytes", "chain-source"],
)  # fmt: skip
def test_field_diffs(old: dict[str, object], new: dict[str, object], line: str) -> None:
    """Each kind of change reads as one line a reviewer understands."""
    assert diffs.changes(old, new) == [line]


def test_a_replace_shows_its_field_diff(repo: Repo, sim: Simulator) -> None:
    """plan names the changed fields under the replace, old → new, with a prompt word diff."""
    repo.write_bytes("assets/a.png", png_bytes(1))
    write(repo, extra="image: ../assets/a.png\n")
    assert apply(repo).returncode == 0
    repo.write_bytes("assets/a.png", png_bytes(2))
    write(repo, PROMPT.replace("sunrise", "sunset"), "image: ../assets/a.png\nresolution: 1080p\n")
    out = repo.run("plan").stdout
    assert "[-sunrise,-] {+sunset,+}" in out
    assert "resolution: 720p → 1080p" in out
    assert "image bytes changed (" in out
    data = json.loads(repo.run("plan", "--json").stdout)
    assert any("resolution" in c for c in data["actions"][0]["changes"])


# -- saved plans and the pull-request comment -------------------------------------------------------


def test_a_saved_plan_round_trips_through_apply(repo: Repo, sim: Simulator, tmp_path: Path) -> None:
    """plan --out, show, then apply FILE: exactly that plan, approved by being saved."""
    write(repo)
    saved = tmp_path / "plan.json"
    assert repo.run("plan", "--out", str(saved)).returncode == 0
    shown = repo.run("show", str(saved))
    assert shown.returncode == 0 and "hero" in shown.stdout and "$0.80" in shown.stdout
    result = repo.run("apply", str(saved), "--poll-interval", "0.1", env=repo.env(**FAST_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sim.paid_posts == 1


def test_a_stale_saved_plan_is_refused(repo: Repo, sim: Simulator, tmp_path: Path) -> None:
    """A spec edited after the plan was saved: apply FILE refuses, says what moved, pays nothing."""
    write(repo)
    saved = tmp_path / "plan.json"
    repo.run("plan", "--out", str(saved))
    write(repo, "Something else entirely.")
    result = repo.run("apply", str(saved), env=repo.env(**FAST_ENV))
    assert result.returncode == 1
    assert "stale" in result.stderr and "hero" in result.stderr
    assert sim.post_requests == 0


def test_plan_as_a_pull_request_comment(repo: Repo, sim: Simulator) -> None:
    """--format markdown: a table, the total, blocked specs, and what changed."""
    write(repo)
    assert apply(repo).returncode == 0
    write(repo, PROMPT.replace("sunrise", "sunset"))
    md = repo.run("plan", "--format", "markdown").stdout
    assert md.startswith("### reconcile plan")
    assert "| `-/+` | `hero` | replace | $0.80 |" in md
    assert "**Plan: 1 to replace. Estimated cost: $0.80" in md
    assert "<details><summary>What changed</summary>" in md


def test_the_apply_summary_lists_files_and_money(repo: Repo, sim: Simulator) -> None:
    """The summary names each file written and what was spent beside the estimate."""
    write(repo)
    result = apply(repo)
    assert "  wrote videos/hero." in result.stdout
    assert "Spent $0.80 on POSTs that may be billed (estimated $0.80)." in result.stdout
    data = json.loads(repo.apply("--json", env=repo.env(**FAST_ENV)).stdout)
    assert data["spent_usd"] == 0 and data["written"] == []


# -- takes ---------------------------------------------------------------------------------------------


def test_takes_are_listed_and_an_earlier_one_pinned_for_free(repo: Repo, sim: Simulator) -> None:
    """After a --replace, both takes are listed; pinning the first brings it back, no POST."""
    write(repo)
    assert apply(repo).returncode == 0
    assert apply(repo, "--replace", "hero").returncode == 0
    listed = json.loads(repo.run("takes", "hero", "--json").stdout)
    assert len(listed) == 2 and [t["current"] for t in listed] == [False, True]
    first = listed[0]["sha256"]
    write(repo, extra=f'take: "{first[:12]}"\n')
    plan = repo.run("plan").stdout
    assert f"pinned take {first[:16]}" in plan and "materialize" in plan
    assert apply(repo).returncode == 0
    assert sim.paid_posts == 2
    assert repo.status()["hero"]["path"] is not None
    assert (repo.path / "videos" / f"hero.{first[:16]}.mp4").exists()
    write(repo, extra='take: "ffffffffff"\n')
    assert "is not one of hero's takes" in repo.run("plan").stdout


def test_gc_dry_run_names_the_spec_and_take(repo: Repo, sim: Simulator) -> None:
    """gc --dry-run says whose take each object it would delete is, and its size."""
    write(repo)
    assert apply(repo).returncode == 0
    assert apply(repo, "--replace", "hero").returncode == 0
    out = repo.run("gc", "--dry-run").stdout
    assert "hero's take of 20" in out and "bytes)" in out


# -- the team's daily tools ------------------------------------------------------------------------


def test_init_scaffolds_an_asset_repo_and_keeps_what_exists(tmp_path: Path) -> None:
    """init writes the starter files, never overwrites, and what it writes validates."""
    repo = Repo(tmp_path / "new-assets", None)
    repo.path.mkdir()
    first = repo.run("init")
    assert first.returncode == 0, first.stderr
    for rel in ("specs/example.yaml", "reconcile.yaml", ".gitattributes", "state/.gitignore",
                ".github/workflows/videos.yml"):  # fmt: skip
        assert (repo.path / rel).is_file(), rel
    assert "reconcile.lock merge=reconcile-lock" in (repo.path / ".gitattributes").read_text()
    (repo.path / "reconcile.yaml").write_text("outputDir: clips\n")
    again = repo.run("init")
    assert "kept    reconcile.yaml" in again.stdout
    assert (repo.path / "reconcile.yaml").read_text() == "outputDir: clips\n"
    assert repo.run("validate").returncode == 0


def test_cost_reports_the_ledger(repo: Repo, sim: Simulator) -> None:
    """cost sums what was charged, by spec and by model, refunds deducted."""
    write(repo)
    assert apply(repo).returncode == 0
    by_spec = json.loads(repo.run("cost", "--by", "spec", "--json").stdout)
    assert by_spec == [{"group": "hero", "usd": 0.8, "posts": 1}]
    by_model = repo.run("cost", "--by", "model").stdout
    assert "veo-3.1-fast-generate-preview" in by_model and "$0.80" in by_model


def test_the_plain_table_is_laid_out_cell_by_cell() -> None:
    """A pipe's table (one template per line, written at once) is the layout of padding each
    cell but the last to its column's widest and trimming the line's end: empty cells, wide
    characters counted as one, a one-column table, no rows."""
    import io

    from reconciler.report import _table

    def by_cells(headers: list[str], rows: list[list[str]]) -> str:
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        lines = []
        for row in [headers, *rows]:
            cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip() + "\n")
        return "".join(lines)

    cases = [
        (["", "name", "action", "cost", "why"],
         [["+", "a", "create", "$0.80", "new spec"], ["-/+", "longer-name", "replace", "", ""],
          ["!", "café", "blocked", "", "{braces} and  spaces "]]),
        (["name", "state", "path", "sha256", "error"], [["x", "", "", "", ""]]),
        (["only"], [["one"], [""], ["{0}"]]),
        (["a", "b"], []),
    ]  # fmt: skip
    for headers, rows in cases:
        out = io.StringIO()
        _table(out, headers, rows, rest="9 unchanged")
        assert out.getvalue() == by_cells(headers, rows) + "(9 unchanged)\n"


def test_the_summary_says_the_same_lines_to_a_pipe_and_a_terminal() -> None:
    """The apply summary goes to a pipe as plain lines written at once (rich cost 0.2 ms a line),
    to a terminal through rich: both say the same text, brackets and emoji codes as they are."""
    import io
    import re

    from reconciler.engine import Summary
    from reconciler.lifecycle import Outcome, OutcomeState
    from reconciler.report import render_summary

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    summary = Summary(polls=3, spent=0.8, estimate=1.6, fatal="refused [401] :smile:")
    summary.outcomes = [
        Outcome("a", OutcomeState.MATERIALIZED, "placed", path="videos/a.0123.mp4"),
        Outcome("b[1]", OutcomeState.FAILED, "rejected: [bold]not[/bold] a prompt :thumbs_up:"),
        Outcome("c", OutcomeState.MATERIALIZED, "up to date"),
    ]
    expected = [
        "Apply incomplete: 1 failed, 1 materialized, 1 up to date",
        "  b[1]: failed: rejected: [bold]not[/bold] a prompt :thumbs_up:",
        "  wrote videos/a.0123.mp4",
        "Spent $0.80 on POSTs that may be billed (estimated $1.60).",
        "3 polls for 1 video(s) written.",
        "Stopped: refused [401] :smile:",
    ]
    pipe, terminal = io.StringIO(), Terminal()
    render_summary(summary, pipe)
    render_summary(summary, terminal)
    assert pipe.getvalue() == "".join(line + "\n" for line in expected)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())
    assert [line.rstrip() for line in shown.splitlines()] == expected
