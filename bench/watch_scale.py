"""Benchmark: one spec edited under `reconcile watch` in a repo of N specs, against a repo of one.

Measures, in one run on this machine:
- floor: save -> the simulator receives the paid POST, through a real `reconcile watch --settle 0`
  process, in a repo of one spec (its video already made): the same edit with nothing around it;
- watch at scale: the same edits, the same way, in a repo of N specs, all with their videos
  (state db, lock and files seeded through the reconciler's own lock import: no API calls).

Each sample edits the prompt of one spec (a new key: one paid POST). Prints the medians and the
ratio scale/floor against the issue-11 target (<= 1.5x); exit 1 on a miss. `--quick` (the CI
smoke) uses 2,000 specs and fewer edits.

    python bench/watch_scale.py [--specs 10000] [--edits 8] [--quick] [--code DIR]

`--code DIR` runs the daemon from another checkout (say, main before this work).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from download_memory import sim_env  # noqa: E402
from plan_scale import SPEC, make_repo, materialize  # noqa: E402

from reconciler.sim import Simulator  # noqa: E402

KEY = "bench-key"
CODE = ROOT  # the checkout whose daemon runs (--code)
TARGET = 1.5
EDITED = "specs/g0000/s000000.yaml"


def lock_mtime(repo: Path) -> int:
    return (repo / "reconcile.lock").stat().st_mtime_ns


def edit_latency(specs: int, edits: int) -> list[float]:
    """Save -> POST for ``edits`` prompt edits of one spec in a materialized repo of ``specs``."""
    with Simulator(api_key=KEY, latency=0.2) as sim, tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "repo"
        make_repo(repo, specs)
        materialize(repo)
        env = sim_env(sim, CODE, KEY)
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "--poll-interval", "0.2",
             "--settle", "0"],
            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "reconciled (start)" in line:
                    break
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep it drained
            if sim.post_requests:
                sys.exit(f"the seeded repo was not materialized: {sim.post_requests} POSTs")
            samples = []
            for i in range(edits):
                text = SPEC.format(i=0).replace("Bench clip 0:", f"Edit {i} of clip 0:")
                before = lock_mtime(repo)
                start = time.monotonic()
                (repo / EDITED).write_text(text)
                deadline = start + 30
                while sim.posts_for(f"Edit {i} of clip 0:") == 0 and time.monotonic() < deadline:
                    time.sleep(0.002)
                post = [r.time for r in sim.requests if r.json and
                        f"Edit {i} of clip 0:" in str(r.json)]  # fmt: skip
                samples.append((post[0] if post else deadline) - start)
                # A quiet repo for the next edit: its video downloaded and the lock rewritten.
                while lock_mtime(repo) == before and time.monotonic() < deadline + 10:
                    time.sleep(0.02)
                time.sleep(0.3)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stderr:
                proc.stderr.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--edits", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2,000 specs, 5 edits")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose code runs")
    args = parser.parse_args()
    global CODE
    CODE = args.code.resolve()
    specs, edits = (2_000, 5) if args.quick else (args.specs, args.edits)
    floor = statistics.median(edit_latency(1, edits)) * 1000
    scale = statistics.median(edit_latency(specs, edits)) * 1000
    ratio = scale / max(floor, 0.01)
    print(f"edits: {edits}")
    print(f"floor  (save -> POST, repo of 1 spec):       median {floor:7.1f} ms")
    print(f"watch  (save -> POST, repo of {specs:,} specs): median {scale:7.1f} ms")
    print(f"ratio  scale/floor: {ratio:.2f}x   target: <= {TARGET:g}x")
    ok = ratio <= TARGET
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
