"""Fixtures for S3-compatible storage: moto's server on loopback, a bucket per test.

moto's server mode runs as a subprocess started here (nothing runs beforehand), or a real bucket
is named by ``RECONCILE_TEST_S3=s3://bucket/prefix`` with the AWS environment to reach it. Without
boto3/moto the tests skip, unless ``RECONCILE_REQUIRE_S3`` is set (CI), where that is a failure.
Working trees are copied the way git moves them (specs, lock; never the videos or state/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Repo

    from reconciler.sim import Simulator

SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: {prompt}\n"
LOCK = "reconcile.lock"

# -- the server, a bucket per test, the AWS environment ----------------------------------------


def _need(module: str) -> None:
    """Skip without the S3 packages, unless CI requires them (RECONCILE_REQUIRE_S3=1)."""
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("RECONCILE_REQUIRE_S3"):
            pytest.fail(f"RECONCILE_REQUIRE_S3 is set but {message}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The AWS environment of the S3 server: moto's server on a loopback port of its own,
    or (RECONCILE_TEST_S3 set) whatever the outer environment says."""
    _need("boto3")
    if os.environ.get("RECONCILE_TEST_S3"):
        yield {}
        return
    _need("moto")
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "moto_server did not start in 30 s"
            time.sleep(0.05)
        yield {
            "AWS_ENDPOINT_URL": found.group(1),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Bucket:
    """One test's place in the store, and a client of the test's own to look into it."""

    client: Any
    name: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def key(self, sha: str) -> str:
        return f"{self.prefix}/{sha[:2]}/{sha[2:]}"

    def objects(self) -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2")
        return {
            item["Key"]: item["Size"]
            for page in pages.paginate(Bucket=self.name, Prefix=f"{self.prefix}/")
            for item in page.get("Contents", [])
        }

    def shas(self) -> set[str]:
        return {k.removeprefix(f"{self.prefix}/").replace("/", "") for k in self.objects()}

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)


@pytest.fixture
def bucket(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A fresh bucket (moto) or prefix (a real S3) for this test, with the AWS environment
    exported so every `reconcile` subprocess of the test inherits it."""
    import boto3

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    client = boto3.session.Session().client("s3")
    run = uuid.uuid4().hex[:12]
    external = os.environ.get("RECONCILE_TEST_S3")
    if external:
        name, _, base = external.removeprefix("s3://").partition("/")
        place = Bucket(client, name, "/".join(p for p in (base.strip("/"), f"test-{run}") if p))
    else:
        place = Bucket(client, f"reconcile-test-{run}", "team/videos")
        client.create_bucket(Bucket=place.name)
    yield place
    for key in place.objects():
        with contextlib.suppress(Exception):
            client.delete_object(Bucket=place.name, Key=key)


def shared(repo: Repo, bucket: Bucket, *names: str) -> Repo:
    """Specs (one per name) in a repo whose reconcile.yaml shares objects through the bucket."""
    repo.write("reconcile.yaml", f"objects: {bucket.url}\n")
    for name in names:
        repo.write(f"specs/{name}.yaml", SPEC.format(name=name, prompt=f"The {name} shot."))
    return repo


def clone(repo: Repo, to: Path) -> Repo:
    """A fresh clone without the videos: specs, reconcile.yaml and the lock, never state/."""
    shutil.copytree(repo.path, to, ignore=shutil.ignore_patterns("state", "videos"))
    return dataclasses.replace(repo, path=to)


def locked(repo: Repo) -> dict[str, str]:
    """name -> sha256 of every entry of the repo's lock."""
    text = (repo.path / LOCK).read_text()
    names = re.findall(r"^  (\S+):$", text, re.M)
    shas = re.findall(r'sha256: "([0-9a-f]{64})"', text)
    return dict(zip(names, shas, strict=True))


def requests(sim: Simulator) -> tuple[int, int, int, int]:
    return sim.post_requests, sim.polls, sim.downloads, len(sim.requests)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result
