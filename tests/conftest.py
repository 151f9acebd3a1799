"""Shared fixtures: a real simulator on loopback, asset repos in tmp_path, the CLI as a subprocess.

Nothing of our own is mocked: tests drive ``reconcile`` the way a user or CI does and look at what
the simulator received and what landed on disk.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pg import pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL, a database per test)

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


@dataclass
class Repo:
    """An asset repo on disk, with helpers to write specs and run the CLI against it."""

    path: Path
    sim: Simulator | None

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
        """Run `reconcile ARGS` in this repo as a real subprocess."""
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

    def spawn_apply(
        self, *args: str, env: dict[str, str] | None = None, poll: str = "0.1"
    ) -> subprocess.Popen[str]:
        """Start `reconcile apply --yes` in the background, output piped, for kill and race tests."""
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "apply", "--yes", "--poll-interval", poll, *args],
            cwd=self.path, env=env or self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

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


@pytest.fixture
def repo(tmp_path: Path, sim: Simulator) -> Repo:
    path = tmp_path / "assets-repo"
    (path / "specs").mkdir(parents=True)
    return Repo(path, sim)


@pytest.fixture
def offline_repo(tmp_path: Path) -> Repo:
    """A repo with no API configured: anything that would reach the network must not."""
    path = tmp_path / "assets-repo"
    (path / "specs").mkdir(parents=True)
    return Repo(path, None)
