"""Shared fixtures: a real simulator on loopback, asset repos in tmp_path, the CLI in-process.

Nothing of our own is mocked: tests drive ``reconcile`` the way a user or CI does and look at what
the simulator received and what landed on disk. The tests come in layers by speed:

1. pure functions and the store on sqlite files (plan, lifecycle, spec key, wire, pacing, store);
2. engines in one asyncio loop against the simulator over loopback (``engines.py``);
3. the CLI through click's runner, in this process (``Repo.run``, the default);
4. real ``python -m reconciler`` processes: what is read once, at import (failpoints, the umask),
   signals, SIGKILL, several processes racing, the watch daemon. These are marked ``slow`` (as is
   any test over about 2 s), and only a test marked ``slow`` may start one (``Repo.run_process``,
   ``Repo.spawn``), so ``pytest -m "not slow"`` stays the quick loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import traceback
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pg import pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL, a database per test)
from s3 import bucket, s3_env  # noqa: F401  (fixtures: moto's S3 server, a bucket per test)

from reconciler import failpoints
from reconciler.cli import main
from reconciler.sim import Simulator

API_KEY = "sk-test-0123456789SECRETKEYabcdef"
ROOT = Path(__file__).resolve().parent.parent


def png_bytes(seed: int = 0) -> bytes:
    """A real 2x2 PNG; the seed changes a pixel so images can differ."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + bytes([seed % 256, 0, 0] * 2) for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes() -> bytes:
    """Enough of a JPEG for magic-byte detection (SOI + APP0 JFIF header + EOI)."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


def invoke(
    cwd: Path, args: Sequence[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """`reconcile ARGS` in this process through click's runner, as a real process would run it: in
    ``cwd``, with exactly ``env`` as its environment, stdin not a terminal, stdout and stderr apart,
    and a crash (any exception but SystemExit) as exit 1 with its traceback on stderr."""
    exact: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    exact.update(env)
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(main, list(args), env=exact, prog_name="reconcile")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(
        ["reconcile", *args], result.exit_code, result.stdout, stderr
    )


def open_files_under(folder: Path) -> list[str]:
    """Files under ``folder`` this process holds open (Linux; elsewhere nothing is found)."""
    fds = Path("/proc/self/fd")
    held = []
    for fd in fds.iterdir() if fds.is_dir() else ():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(f"{folder}{os.sep}"):
                held.append(target)
    return held


@dataclass
class Repo:
    """An asset repo on disk, with helpers to write specs and run the CLI against it.

    ``processes``: whether the test may start real processes (only tests marked ``slow`` may)."""

    path: Path
    sim: Simulator | None
    processes: bool = False

    def write(self, rel: str, text: str) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text).lstrip("\n"))
        return target

    def write_bytes(self, rel: str, data: bytes) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTPROTO", "RECONCILE"))}
        env["PYTHONPATH"] = str(ROOT)
        if self.sim is not None:
            env["RECONCILE_API_BASE"] = self.sim.base_url
            env["GPTPROTO_API_KEY"] = API_KEY
        env.update(extra)
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `reconcile ARGS` in this repo, in this process (see ``invoke``).

        An armed failpoint needs a real process: ``failpoints`` reads its variable once, at import,
        and kills the process it is in, so such a run goes to ``run_process`` (and the test must be
        marked ``slow``). ``timeout`` bounds only real processes; pytest-timeout bounds the rest."""
        env = env or self.env()
        if failpoints.ENV in env:
            return self.run_process(*args, env=env, timeout=timeout)
        result = invoke(self.path, args, env)
        held = open_files_under(self.path)
        assert not held, f"`reconcile {' '.join(args)}` left files open: {held}"
        return result

    def run_process(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `reconcile ARGS` in this repo as a real subprocess."""
        self._may_start_processes()
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=self.path,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def apply(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "--yes", "--poll-interval", "0.1", *args, **kw)

    def spawn(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        stdout: int = subprocess.PIPE,
        stderr: int = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """Start `reconcile ARGS` in the background, for kill, signal, race and daemon tests."""
        self._may_start_processes()
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", *args],
            cwd=self.path, env=env or self.env(), stdout=stdout, stderr=stderr, text=True,
        )  # fmt: skip

    def spawn_apply(
        self, *args: str, env: dict[str, str] | None = None, poll: str = "0.1"
    ) -> subprocess.Popen[str]:
        """Start `reconcile apply --yes` in the background, output piped, for kill and race tests."""
        return self.spawn("apply", "--yes", "--poll-interval", poll, *args, env=env)

    def _may_start_processes(self) -> None:
        assert self.processes, "this test starts real processes: mark it @pytest.mark.slow"

    def wait_for_posts(self, count: int, timeout: float = 20.0) -> None:
        """Block until the simulator has accepted `count` paid POSTs."""
        assert self.sim is not None
        deadline = time.monotonic() + timeout
        while self.sim.paid_posts < count:
            assert time.monotonic() < deadline, f"only {self.sim.paid_posts} POSTs in {timeout} s"
            time.sleep(0.05)

    def status(self) -> dict[str, dict[str, Any]]:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        return {row["name"]: row for row in json.loads(result.stdout)}

    def videos(self) -> list[str]:
        folder = self.path / "videos"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_key_nowhere(repo: Repo, results: list[subprocess.CompletedProcess[str]]) -> None:
    """The key is in no output of the given runs and in no byte of any file under the repo."""
    for result in results:
        assert API_KEY not in result.stdout and API_KEY not in result.stderr
    written = [p for p in repo.path.rglob("*") if p.is_file()]
    assert any(p.name == "reconciler.db" for p in written)
    for path in written:
        assert API_KEY.encode() not in path.read_bytes(), path


SPEC = """
name: {name}
model: veo-3.1-fast-generate-preview
prompt: {prompt}
"""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """Stand-in clips: the CLI tests download hundreds of videos; test_video.py plays real ones."""
    with Simulator(api_key=API_KEY, latency=0.3, video="standin") as server:
        yield server


def is_slow(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("slow") is not None


@pytest.fixture
def repo(tmp_path: Path, sim: Simulator, request: pytest.FixtureRequest) -> Repo:
    path = tmp_path / "assets-repo"
    (path / "specs").mkdir(parents=True)
    return Repo(path, sim, processes=is_slow(request))


@pytest.fixture
def offline_repo(tmp_path: Path, request: pytest.FixtureRequest) -> Repo:
    """A repo with no API configured: anything that would reach the network must not."""
    path = tmp_path / "assets-repo"
    (path / "specs").mkdir(parents=True)
    return Repo(path, None, processes=is_slow(request))


HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(autouse=True)
def leaves_the_process_as_it_found_it() -> Iterator[None]:
    """In-process runs share this process: each test must give back its signal handlers, its
    working directory and its environment as it found them. What one leaks is put back before
    the test is failed for it, so the next test in this worker starts clean."""
    handlers = {sig: signal.getsignal(sig) for sig in HANDLED}
    cwd = os.getcwd()
    environ = environment()
    yield
    leaked = {sig.name: now for sig in HANDLED if (now := signal.getsignal(sig)) != handlers[sig]}
    for sig in leaked:
        signal.signal(signal.Signals[sig], handlers[signal.Signals[sig]])
    moved = os.getcwd()
    os.chdir(cwd)
    changed = sorted(k for k in environ.keys() | environment().keys()
                     if environ.get(k) != os.environ.get(k))  # fmt: skip
    for key in changed:
        if key in environ:
            os.environ[key] = environ[key]
        else:
            del os.environ[key]
    assert not leaked, f"signal handlers left behind: {leaked}"
    assert moved == cwd, f"working directory left at {moved}"
    assert not changed, f"environment variables changed: {changed}"


def environment() -> dict[str, str]:
    """os.environ but for the variable pytest itself changes between a test's phases."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def pytest_configure(config: pytest.Config) -> None:
    if failpoints.ENV in os.environ:
        # failpoints arms itself at import: an in-process run would SIGKILL pytest.
        raise pytest.UsageError(f"unset {failpoints.ENV} before running the tests")
