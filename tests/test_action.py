"""The GitHub Action (action.yml) run the way a runner runs it: each step's `if:` decided, its
`env:` filled from the inputs, its `run:` script executed by bash in the asset repo, with the
runner's files (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY) on disk. The tool is the one under test
(installed already: ``install: false``), the API the simulator.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, Repo

from reconciler.sim import Simulator

SPEC = "name: hero\nmodel: veo-3.1-fast-generate-preview\nprompt: A harbour at dawn.\n"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def action() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
    return loaded


def evaluate(expression: str, inputs: dict[str, str]) -> Any:
    """The little of GitHub's expression language the action uses: inputs, ==, !=, &&, ||."""
    python = re.sub(r"inputs\.([\w-]+)", lambda m: repr(inputs[m.group(1)]), expression)
    python = python.replace("&&", " and ").replace("||", " or ")
    return eval(python, {"__builtins__": {}})


def run_action(repo: Repo, tmp_path: Path, **given: str) -> tuple[int, dict[str, str], str]:
    """Every step of the action with these inputs; (exit code, outputs, job summary)."""
    spec = action()
    inputs = {name: str(item.get("default", "")) for name, item in spec["inputs"].items()}
    inputs.update(given, install="false")
    runner = tmp_path / "runner"
    runner.mkdir(exist_ok=True)
    output, summary = runner / "output", runner / "summary"
    output.write_text("")
    summary.write_text("")
    env = repo.env(
        GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(summary), RUNNER_TEMP=str(runner),
        GITHUB_ACTION_PATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )  # fmt: skip
    for step in spec["runs"]["steps"]:
        if "if" in step and not evaluate(step["if"], inputs):
            continue
        assert "run" in step, f"a step that runs with install: false must be a script: {step}"
        step_env = {k: EXPR.sub(lambda m: str(evaluate(m.group(1), inputs)), str(v))
                    for k, v in step.get("env", {}).items()}  # fmt: skip
        folder = EXPR.sub(lambda m: str(evaluate(m.group(1), inputs)),
                          step.get("working-directory", "."))  # fmt: skip
        script = runner / "step.sh"
        script.write_text(step["run"])
        # As GitHub runs a `shell: bash` step: errexit and pipefail on, whatever the script says.
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=repo.path / folder, env={**env, **step_env},
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            return done.returncode, {}, done.stdout + done.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return 0, outputs, summary.read_text()


def test_the_action_declares_plan_and_apply_with_their_outputs() -> None:
    spec = action()
    assert spec["runs"]["using"] == "composite"
    assert {"command", "max-cost", "args", "working-directory"} <= set(spec["inputs"])
    assert {"changes", "plan-file", "plan-markdown"} <= set(spec["outputs"])
    for step in spec["runs"]["steps"]:
        # Inputs reach scripts through env only: an input spliced into a script is injectable.
        assert "${{" not in step.get("run", ""), step["run"]


@pytest.mark.slow
def test_plan_on_a_pull_request_then_apply_on_main(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """plan: changes=true, the markdown plan in the job summary and a file, no POST. apply:
    the video paid once. plan again: changes=false."""
    repo.processes = True
    repo.write("specs/hero.yaml", SPEC)
    code, outputs, summary = run_action(repo, tmp_path, command="plan")
    assert code == 0, summary
    assert outputs["changes"] == "true"
    assert "### reconcile plan" in summary and "`hero`" in summary and "create" in summary
    assert Path(outputs["plan-markdown"]).read_text() in summary
    assert Path(outputs["plan-file"]).is_file()
    assert sim.post_requests == 0

    code, _, log = run_action(repo, tmp_path, command="apply", **{"max-cost": "5"})
    assert code == 0, log
    assert sim.paid_posts == 1 and len(repo.videos()) == 1

    code, outputs, summary = run_action(repo, tmp_path, command="plan")
    assert code == 0, summary
    assert outputs["changes"] == "false"
    assert sim.paid_posts == 1


@pytest.mark.slow
def test_apply_over_max_cost_fails_the_step_and_pays_nothing(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    repo.processes = True
    repo.write("specs/hero.yaml", SPEC)
    code, _, log = run_action(repo, tmp_path, command="apply", **{"max-cost": "0.10"})
    assert code == 1 and "--max-cost" in log
    assert sim.post_requests == 0


@pytest.mark.slow
def test_a_bad_command_or_a_shell_in_args_runs_nothing(repo: Repo, tmp_path: Path) -> None:
    repo.processes = True
    repo.write("specs/hero.yaml", SPEC)
    code, _, log = run_action(repo, tmp_path, command="destroy")
    assert code == 1 and "command must be plan or apply" in log
    code, _, log = run_action(repo, tmp_path, command="plan", args="; touch pwned")
    assert code != 0
    assert not (repo.path / "pwned").exists()


@pytest.mark.slow
def test_a_free_materialize_is_not_a_change_and_an_invalid_spec_fails_the_step(
    repo: Repo, sim: Simulator, tmp_path: Path
) -> None:
    """A fresh runner whose videos are not in git plans only free materializes: the step passes
    with changes=false (no comment on every pull request). A spec that does not validate fails
    the step and sets no outputs."""
    repo.processes = True
    repo.write("specs/hero.yaml", SPEC)
    code, _, log = run_action(repo, tmp_path, command="apply")
    assert code == 0, log
    for video in (repo.path / "videos").iterdir():
        video.unlink()
    code, outputs, summary = run_action(repo, tmp_path, command="plan")
    assert code == 0, summary
    assert "materialize" in summary
    assert outputs["changes"] == "false"
    repo.write("specs/broken.yaml", "name: broken\nmodel: veo-3.1-fast-generate-preview\n")
    code, outputs, log = run_action(repo, tmp_path, command="plan")
    assert code == 1 and outputs == {}
    assert "broken.yaml" in log
    assert sim.paid_posts == 1
