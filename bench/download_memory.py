"""Benchmark: `reconcile apply` memory stays flat whatever the video's size.

Measures, in one run on this machine, the peak RSS of a real `reconcile apply` process that
downloads (streaming into the cache while hashing) and materializes one video of each size, and of
`reconcile validate` on the same repo as the floor (the interpreter plus the imports). Prints each
peak and its ratio to the floor; the target is that a video 16x larger costs no more memory.

    python bench/download_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.sim import Simulator  # noqa: E402

KEY = "bench-key"
SPEC = "name: big\nmodel: veo-3.1-fast-generate-preview\nprompt: A long slow pan, {size} bytes.\n"


def wait_peak_kb(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` to exit, sampling its VmHWM (the kernel's high-water mark of its RSS)."""
    peak_kb = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return peak_kb


def sim_env(sim: Simulator, code: Path = ROOT, key: str = KEY) -> dict[str, str]:
    """What a measured reconcile process runs with: ``code``'s reconciler, the simulator as its
    API and a key it takes (every bench script's child gets this)."""
    return {**os.environ, "RECONCILE_API_BASE": sim.base_url, "GPTPROTO_API_KEY": key,
            "PYTHONPATH": str(code)}  # fmt: skip


def peak_rss_mb(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Peak RSS of one child process: its VmHWM (high-water mark), read until it exits.

    The kernel's high-water mark of the exec'd image, so the parent's own memory (which holds
    the simulator's video) cannot leak into the figure the way a fork's rusage can.
    """
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    peak_kb = wait_peak_kb(proc)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:])} failed:\n{err}")
    return peak_kb / 1024


def measure(size: int) -> tuple[float, float]:
    with (
        Simulator(api_key=KEY, latency=0.1, video_size=size) as sim,
        tempfile.TemporaryDirectory() as d,
    ):
        repo = Path(d)
        (repo / "specs").mkdir()
        (repo / "specs" / "big.yaml").write_text(SPEC.format(size=size))
        env = sim_env(sim)
        cli = [sys.executable, "-m", "reconciler"]
        floor = peak_rss_mb([*cli, "validate"], repo, env)
        peak = peak_rss_mb([*cli, "apply", "--yes", "--poll-interval", "0.1"], repo, env)
        video = next((repo / "videos").iterdir())
        assert video.stat().st_size == size, (video.stat().st_size, size)
    return floor, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 4 and 64 MiB")
    args = parser.parse_args()
    sizes = [4 << 20, 64 << 20] if args.quick else [16 << 20, 256 << 20]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    results = []
    for size in sizes:
        floor, peak = measure(size)
        results.append(peak)
        print(f"video {size >> 20:4d} MiB: apply peak RSS {peak:6.1f} MiB, floor (validate) "
              f"{floor:6.1f} MiB, ratio {peak / floor:4.2f}x")  # fmt: skip
    growth = results[-1] - results[0]
    print(f"growth from {sizes[0] >> 20} to {sizes[-1] >> 20} MiB video: {growth:+.1f} MiB of RSS")
    ok = growth < 16
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
