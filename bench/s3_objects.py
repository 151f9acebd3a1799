"""Benchmark: the shared object store (S3, here moto's server on loopback) against the local cache.

Measures, in one run on this machine:

- throughput of putting one video into the local cache (hash, copy, fsync), uploading it to the
  bucket (create-only, multipart above 8 MiB, hashed on the way), and pulling it back into an
  empty cache (streamed, verified by hash on the way in);
- the peak RSS of a real `reconcile apply` that downloads a video from the simulator and uploads
  it to the bucket, and of a fresh clone's apply that materializes it from the bucket alone, each
  against `reconcile validate` as the floor. The target: a video 16x larger costs no more memory.

Loopback to moto measures the tool and the protocol, not a network; moto itself (Python) is the
slowest part, so real S3 or MinIO is faster.

    python bench/s3_objects.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from download_memory import peak_rss_mb, sim_env  # noqa: E402

from reconciler.objects import ObjectCache  # noqa: E402
from reconciler.s3objects import S3Objects  # noqa: E402
from reconciler.sim import Simulator  # noqa: E402

KEY = "bench-key-0123456789abcdef"
SPEC = "name: big\nmodel: veo-3.1-fast-generate-preview\nprompt: A long slow pan, {size} bytes.\n"
MIB = 1 << 20


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 30
    while not (found := re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"moto_server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    env = {"AWS_ENDPOINT_URL": found.group(1), "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    return proc, env


def throughput(size: int, work: Path, url: str) -> dict[str, float]:
    """MB/s of the three ways one object moves: into the local cache, up, and back down."""
    src = work / "video.mp4"
    with src.open("wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    figures = {}
    started = time.perf_counter()
    ObjectCache(work / "local").add_file(src)
    figures["local cache (hash, copy, fsync)"] = time.perf_counter() - started
    store = S3Objects(url)
    store.client  # noqa: B018 - the client and its bucket check, outside the timing
    started = time.perf_counter()
    assert store.write(sha, src)
    figures["upload (multipart, create-only)"] = time.perf_counter() - started
    cache = ObjectCache(work / "pulled", remote=S3Objects(url))
    cache.remote.etags([sha])  # type: ignore[union-attr]
    started = time.perf_counter()
    assert cache.fetch(sha)
    figures["pull into an empty cache (verified)"] = time.perf_counter() - started
    return {what: size / MIB / seconds for what, seconds in figures.items()}


def memory(size: int, url: str, env: dict[str, str], work: Path) -> tuple[float, float, float]:
    """Peak RSS (MiB) of validate, of an apply that uploads, and of a clone's apply that pulls."""
    with Simulator(api_key=KEY, latency=0.1, video_size=size) as sim:
        repo = work / f"repo-{size}"
        (repo / "specs").mkdir(parents=True)
        (repo / "specs" / "big.yaml").write_text(SPEC.format(size=size))
        (repo / "reconcile.yaml").write_text(f"objects: {url}/{size}\n")
        run_env = {**sim_env(sim, key=KEY), **env}
        cli = [sys.executable, "-m", "reconciler"]
        floor = peak_rss_mb([*cli, "validate"], repo, run_env)
        up = peak_rss_mb([*cli, "apply", "--yes", "--poll-interval", "0.1"], repo, run_env)
        clone = work / f"clone-{size}"
        shutil.copytree(repo, clone, ignore=shutil.ignore_patterns("state", "videos"))
        downloads = sim.downloads
        down = peak_rss_mb([*cli, "apply", "--yes"], clone, run_env)
        assert sim.downloads == downloads, "the clone asked the provider"
        video = next((clone / "videos").iterdir())
        assert video.stat().st_size == size, (video.stat().st_size, size)
    return floor, up, down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 4 and 64 MiB")
    args = parser.parse_args()
    sizes = [4 * MIB, 64 * MIB] if args.quick else [16 * MIB, 256 * MIB]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        proc, env = start_moto(work / "moto.log")
        os.environ.update(env)
        try:
            import boto3

            boto3.session.Session().client("s3").create_bucket(Bucket="bench")
            url = "s3://bench/objects"
            (work / "speed").mkdir()
            for what, rate in throughput(sizes[-1], work / "speed", url).items():
                print(f"{sizes[-1] // MIB:4d} MiB {what:37s} {rate:7.1f} MiB/s")
            peaks = []
            for size in sizes:
                floor, up, down = memory(size, url, env, work)
                peaks.append((up, down))
                print(f"video {size // MIB:4d} MiB: peak RSS apply+upload {up:6.1f} MiB, clone "
                      f"pull {down:6.1f} MiB, floor (validate) {floor:6.1f} MiB")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
    growth = max(peaks[-1][i] - peaks[0][i] for i in (0, 1))
    print(
        f"growth from {sizes[0] // MIB} to {sizes[-1] // MIB} MiB video: {growth:+.1f} MiB of RSS"
    )
    ok = growth < 16
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
