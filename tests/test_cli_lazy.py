"""The root command imports each command's module only when that command runs.

`reconcile --help` lists the commands from a table in `reconciler/cli/__init__.py` (their modules,
and the first paragraph of their help), so the table must say what the commands themselves say;
shell completion must offer the same names. The tests that start a real process (what a fresh
interpreter imports; the completion script as the shell runs it) are marked ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reconciler.cli import COMMANDS, main
from reconciler.cli.group import LazyGroup

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pydantic", "httpx", "rich", "sqlite_utils", "sqlite3", "yaml", "watchdog", "av",
         "boto3", "psycopg", "asyncio", "reconciler.engine", "reconciler.workspace")  # fmt: skip


def loaded(name: str) -> click.Command:
    command = main.get_command(click.Context(main), name)
    assert command is not None, name
    return command


def test_the_table_names_every_command_where_it_lives() -> None:
    for name in COMMANDS:
        assert loaded(name).name == name
    assert isinstance(main, LazyGroup) and not main.commands  # nothing registered eagerly


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_summary_is_the_first_paragraph_of_the_help(name: str) -> None:
    help_text = loaded(name).help or ""
    first = help_text.split("\n\n")[0]
    assert " ".join(COMMANDS[name].summary.split()) == " ".join(first.split())
    for limit in (20, 45, 60, 66, 200):
        assert main.summary_of(name, limit) == loaded(name).get_short_help_str(limit)


def test_help_lists_what_clicks_own_listing_would() -> None:
    eager = click.Group("reconcile", commands={name: loaded(name) for name in COMMANDS})
    for width in (50, 80, 120):
        lazy_out = click.HelpFormatter(width=width)
        main.format_commands(click.Context(main), lazy_out)
        eager_out = click.HelpFormatter(width=width)
        eager.format_commands(click.Context(eager), eager_out)
        assert lazy_out.getvalue() == eager_out.getvalue()
        assert all(name in lazy_out.getvalue() for name in COMMANDS)


def test_a_typo_suggests_the_command_and_exits_1() -> None:
    result = CliRunner().invoke(main, ["plann"], prog_name="reconcile")
    assert result.exit_code == 1
    assert "No such command 'plann'. Did you mean 'plan'?" in result.stderr


def fresh(code: str, tmp_path: Path) -> list[str]:
    """The modules a fresh interpreter has imported after ``code`` (run in ``tmp_path``)."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY]


@pytest.mark.slow
def test_help_and_version_import_no_heavy_module(tmp_path: Path) -> None:
    for args in (["--help"], ["--version"]):
        modules = fresh(f"from reconciler.cli import main\nmain({args!r})", tmp_path)
        assert heavy(modules) == [], args
        assert [m for m in modules if m.startswith("reconciler.cli.")] == ["reconciler.cli.group"]
    # A command's help loads its module and the shared one (with sqlite3, for the error boundary).
    modules = fresh("from reconciler.cli import main\nmain(['lock', '--help'])", tmp_path)
    assert {m.split(".")[0] for m in heavy(modules)} == {"sqlite3"}
    assert [m for m in modules if m.startswith("reconciler.cli.")] == [
        "reconciler.cli.common", "reconciler.cli.group", "reconciler.cli.team",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_command_imports_its_own_module_only(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    code = "from reconciler.cli import main\ntry:\n    main(['validate'])\nexcept SystemExit:\n    pass"
    modules = fresh(code, tmp_path)
    assert [m for m in modules if m.startswith("reconciler.cli.")] == [
        "reconciler.cli.common", "reconciler.cli.group", "reconciler.cli.review",
    ]  # fmt: skip
    # Loading specs needs pydantic and YAML; not the engine, the API client or the renderer.
    assert "reconciler.engine" not in modules and "httpx" not in modules and "rich" not in modules


def complete(
    tmp_path: Path, shell: str, words: str, cword: int
) -> subprocess.CompletedProcess[str]:
    """Run the `reconcile` console script, as pip writes it, the way the shell's completion function
    does: the words typed so far in the environment."""
    script = tmp_path / "reconcile"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom reconciler.cli import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")  # fmt: skip
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_RECONCILE_COMPLETE": shell,
           "COMP_WORDS": words, "COMP_CWORD": str(cword)}  # fmt: skip
    return subprocess.run([str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.slow
def test_shell_completion_offers_the_commands(tmp_path: Path) -> None:
    done = complete(tmp_path, "bash_complete", "reconcile ", 1)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"plain,{name}" for name in sorted(COMMANDS)]

    done = complete(tmp_path, "zsh_complete", "reconcile va", 1)
    assert done.stdout.splitlines() == ["plain", "validate", main.summary_of("validate")]

    # A command's own options, and a group's subcommands, come from its module, loaded on demand.
    assert "plain,--target" in complete(tmp_path, "bash_complete", "reconcile plan --ta", 2).stdout
    assert complete(tmp_path, "bash_complete", "reconcile lock ", 2).stdout == "plain,merge\n"


@pytest.mark.slow
def test_shell_completion_scripts(tmp_path: Path) -> None:
    for shell, marker in (("bash", "_reconcile_completion"), ("zsh", "#compdef reconcile"),
                          ("fish", "complete --no-files --command reconcile")):  # fmt: skip
        done = complete(tmp_path, f"{shell}_source", "", 0)
        assert done.returncode == 0, done.stderr
        assert marker in done.stdout, shell


@pytest.mark.slow
def test_a_fresh_clone_is_planned_without_sqlite_utils(tmp_path: Path) -> None:
    """A repo with no state db: `plan`, `status` and `validate` read an empty stand-in migrated in
    memory with sqlite3 alone (sqlite_utils took 60-110 ms to import), and create nothing."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(
        "name: a\nmodel: veo-3.1-fast-generate-preview\nprompt: A quiet harbour at dusk.\n"
    )
    for command in ("plan", "status", "validate"):
        code = f"from reconciler.cli import main\ntry:\n    main([{command!r}])\nexcept SystemExit:\n    pass"
        modules = fresh(code, tmp_path)
        assert "sqlite_utils" not in modules, command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs"]


LEAVING = """
import atexit, sys


class Canary:
    def __del__(self):  # run by the interpreter's teardown, which a quick exit skips
        print("teardown", flush=True)


canary = Canary()
atexit.register(lambda: print("exit handler", flush=True))
sys.argv = ["reconcile", *sys.argv[1:]]
from reconciler.__main__ import run

run()
"""


@pytest.mark.slow  # real processes
@pytest.mark.parametrize(
    ("args", "code", "quick"),
    [
        (["plan", "--detailed-exitcode"], 2, True),
        (["validate"], 0, True),
        (["status"], 0, True),
        (["--version"], 0, False),
    ],
)
def test_read_only_commands_leave_without_teardown_but_keep_their_output(
    tmp_path: Path, args: list[str], code: int, quick: bool
) -> None:
    """plan, validate and status skip the interpreter's teardown (freeing a big load cost 5-8%
    of a cold plan), yet their output, exit code and exit handlers are all there; others exit
    as usual."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(
        "name: a\nmodel: veo-3.1-fast-generate-preview\nprompt: A harbour at dawn.\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", LEAVING, *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert "exit handler" in result.stdout.splitlines()
    assert ("teardown" not in result.stdout) is quick, result.stdout
    expected = {"plan": "create", "validate": "1 spec valid.", "status": "a"}.get(args[0])
    assert expected is None or expected in result.stdout


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("args", [["status"], ["plan"], ["validate"], ["plan", "--json"]])
def test_output_to_a_pipe_nobody_reads_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """`reconcile status | head` and kin: once the reader has gone there is nobody to tell, so
    no "Error: Broken pipe" and no traceback; exit 141 (128 + SIGPIPE), as git's commands."""
    (tmp_path / "specs").mkdir()
    for i in range(50):
        (tmp_path / "specs" / f"s{i}.yaml").write_text(
            f"name: s{i}\nmodel: veo-3.1-fast-generate-preview\nprompt: A harbour, take {i}.\n"
        )
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", *args], cwd=tmp_path, stdout=write,
            stderr=subprocess.PIPE, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("args", [["validate"], ["plan"], ["status"]])
def test_a_profiled_command_leaves_as_usual(tmp_path: Path, args: list[str]) -> None:
    """Under cProfile (as `python -m cProfile -m reconciler plan`) a read-only command takes the
    normal exit: the profiler prints its figures after the command returns, and a quick exit
    left it nothing to print."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(
        "name: a\nmodel: veo-3.1-fast-generate-preview\nprompt: A harbour at dawn.\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-s", "cumtime", "-m", "reconciler", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "function calls" in result.stdout, result.stdout[-2000:]


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("closed", [1, 2])
@pytest.mark.parametrize("args", [["validate"], ["plan"], ["status"]])
def test_a_command_started_with_its_output_closed_runs(
    tmp_path: Path, args: list[str], closed: int
) -> None:
    """`reconcile plan >&-` (or `2>&-`): Python starts with no sys.stdout (or sys.stderr); what
    would go there goes nowhere, and the command runs to its usual exit, without a traceback."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(
        "name: a\nmodel: veo-3.1-fast-generate-preview\nprompt: A harbour at dawn.\n"
    )
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", *args], cwd=tmp_path, stdout=sink, stderr=sink,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
            preexec_fn=lambda: os.close(closed),
        )  # fmt: skip
    assert result.returncode == 0, out.read_text()
    assert "Traceback" not in out.read_text()


def test_commands_run_on_uvloop_unless_asked_for_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply and watch run their loop on uvloop where it is installed, on asyncio's with
    RECONCILE_EVENT_LOOP=asyncio; any other value is one clear error, before anything runs."""
    import asyncio

    import uvloop

    from reconciler.cli.common import run_loop
    from reconciler.errors import ReconcileError

    async def which() -> type:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    monkeypatch.delenv("RECONCILE_EVENT_LOOP", raising=False)
    assert run_loop(which) is uvloop.Loop
    monkeypatch.setenv("RECONCILE_EVENT_LOOP", "asyncio")
    assert issubclass(run_loop(which), asyncio.BaseEventLoop)
    assert not issubclass(run_loop(which), uvloop.Loop)
    monkeypatch.setenv("RECONCILE_EVENT_LOOP", "trio")
    with pytest.raises(ReconcileError, match="RECONCILE_EVENT_LOOP: 'trio' is not one of"):
        run_loop(which)
