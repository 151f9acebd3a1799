"""Benchmark: how long the command line takes to start (target: `reconcile --help` ≤ 3x `python -c pass`).

Measures, in one run on this machine, the median wall time of N runs of each of:
- floor: `python -c pass`, the interpreter's own start: no command line can start faster;
- `reconcile --help` and `reconcile --version`: only the root group (the commands are imported
  when they run, see reconciler/cli/group.py);
- `reconcile validate` on a small repo (5 specs): a command that loads and checks specs.

Each as a ratio to the floor. The runs are interleaved (one of each, N times) so that load from
other processes falls on all of them alike. `--quick` (CI smoke) runs fewer rounds and fails only
if `--help` misses the target.

    python bench/startup.py [--runs 21] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = (
    "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: Bench clip {i}, a red balloon.\n"
)
TARGET = 3.0


def wall(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed ({done.returncode}): {done.stderr.decode()}")
    return took


def heaviest_imports(env: dict[str, str], cwd: Path, top: int = 8) -> list[str]:
    """The modules `--help` spends most on (cumulative microseconds), to say why it missed."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reconciler", "--help"],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    rows = [r for r in rows if r[1].strip().isdigit()]
    rows.sort(key=lambda r: int(r[1]), reverse=True)
    return [f"{int(r[1]) / 1000:7.1f} ms  {r[2].strip()}" for r in rows[:top]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 7 runs of each")
    args = parser.parse_args()
    runs = 7 if args.quick else args.runs

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode cached, as installed
    reconcile = [sys.executable, "-m", "reconciler"]
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder)
        (repo / "specs").mkdir()
        for i in range(5):
            (repo / "specs" / f"c{i}.yaml").write_text(SPEC.format(name=f"c{i}", i=i))
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "reconcile --help": [*reconcile, "--help"],
            "reconcile --version": [*reconcile, "--version"],
            "reconcile validate": [*reconcile, "validate"],
        }
        for argv in cases.values():  # warm the disk cache and write the bytecode
            wall(argv, repo, env)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, argv in cases.items():
                samples[name].append(wall(argv, repo, env))
        medians = {name: statistics.median(s) * 1000 for name, s in samples.items()}
        floor = medians["python -c pass"]
        print(f"runs: {runs} of each, interleaved")
        for name, ms in medians.items():
            print(f"{name:<22} median {ms:7.1f} ms  {ms / floor:5.1f}x the floor")
        ratio = medians["reconcile --help"] / floor
        print(f"ratio  --help/floor: {ratio:.1f}x   target: ≤ {TARGET:g}x")
        ok = ratio <= TARGET
        if not ok:
            print("heaviest imports of --help (cumulative):")
            for line in heaviest_imports(env, repo):
                print(f"  {line}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
