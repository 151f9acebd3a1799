"""Benchmark: `plan`, `status` and `validate` on a repo of N spec files, against a floor.

Measures, in one run on this machine (medians of --runs processes each):
- floor: a Python process that walks specs/, reads every file and parses it with PyYAML's C
  loader (`yaml.load_all` with `CSafeLoader`): what any tool reading these files pays;
- plan, cold: `reconcile plan` in a repo with no state/ (a fresh clone: no spec index either);
- plan, warm pending: `reconcile plan` again with nothing changed, state/ present (the spec index
  and the answer memo written by the previous run), nothing generated yet;
- plan, warm materialized: the same once every spec has its video (state db, lock and files,
  seeded through the reconciler's own lock import: no API);
- status, materialized: `reconcile status` in that repo;
  the warm rows start once the inputs are older than the memo's racy window (`memo.SLACK_NS`,
  2 s): a plan within 2 s of a write to its inputs computes in full (see `settle`; creating
  state/ moves the repo's folder, an input while reconcile.lock is missing);
- validate, cold: `reconcile validate` with no index;
- with --linear: plan, cold, at 10 x N specs, against 10 x the N figure and its own floor;
- start-up: `reconcile --help`, the imports every command pays before its first file (another
  row of issue 11); the "work" column is each figure less it, against the floor.

Each figure is printed with its ratio to the floor and the issue-11 target; exit 1 on a miss.
Output goes to a pipe (plain lines), as in CI. `--quick` is the CI smoke: 2,000 specs, 3 runs;
it prints the same verdicts but fails only if the spec index stops working (in this process, a
warm load of every spec must take at most half the CPU of a cold one): at 2,000 specs the
start-up alone is several floors.

    python bench/plan_scale.py [--specs 10000] [--runs 5] [--linear] [--quick] [--code DIR]

`--code DIR` runs the commands from another checkout (say, main before this work) against the
same repos and floor; the repos are still made and seeded with this checkout's code.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler import lockfile  # noqa: E402
from reconciler.config import load_config  # noqa: E402
from reconciler.index import INDEX_FILE  # noqa: E402
from reconciler.loader import load_specs  # noqa: E402
from reconciler.memo import SLACK_NS  # noqa: E402
from reconciler.workspace import Workspace  # noqa: E402

SPEC = (
    "# bench spec {i}\nname: s{i:06d}\nmodel: veo-3.1-fast-generate-preview\nprompt: >\n"
    "  Bench clip {i}: a red balloon drifts over a quiet harbour at dusk, gulls circling.\n"
    'aspectRatio: "16:9"\ndurationSeconds: 8\n'
)
CONFIG = "outputDir: videos\ndefaults:\n  enhancePrompt: true\n"
FLOOR = """
import os, yaml
loader = yaml.CSafeLoader
for folder, dirs, files in os.walk("specs"):
    for name in files:
        with open(os.path.join(folder, name), "rb") as handle:
            list(yaml.load_all(handle.read(), Loader=loader))
"""
CODE = ROOT  # the checkout whose reconciler the timed commands run (--code)
TARGETS = {  # row -> the most its time may be, as a multiple of the floor
    "plan, cold (no state)": 1.2,
    "plan, warm, pending": 0.3,
    "plan, warm, materialized": 0.3,
    "status, materialized": 0.3,
    "validate, cold": 1.2,
}


def make_repo(folder: Path, specs: int) -> None:
    (folder / "specs").mkdir(parents=True)
    (folder / "reconcile.yaml").write_text(CONFIG)
    for i in range(specs):
        sub = folder / "specs" / f"g{i // 500:04d}"
        if i % 500 == 0:
            sub.mkdir()
        (sub / f"s{i:06d}.yaml").write_text(SPEC.format(i=i))


class _Quiet:
    def adopted(self, name: str, what: str) -> None:
        pass


def materialize(folder: Path) -> None:
    """Every spec with its video: files in videos/, a lock naming them, and the state the
    lock import records (the path a fresh clone takes), all in one transaction."""
    ws = Workspace(folder)
    try:
        specs = ws.load().specs
        (folder / "videos").mkdir(exist_ok=True)
        entries = []
        for spec in specs:
            data = f"video of {spec.name}".encode()
            sha = hashlib.sha256(data).hexdigest()
            rel = ws.output_path(spec.name, sha)
            (folder / rel).write_bytes(data)
            entries.append(lockfile.LockEntry(spec.name, spec.key, rel, sha, len(data),
                                              spec.model, None, None))  # fmt: skip
        lockfile.write(ws.lock_path, entries)
        ws.tree.conn.execute("PRAGMA synchronous = OFF")  # type: ignore[attr-defined]
        with ws.tree.tx():  # type: ignore[attr-defined]
            ws.import_lock(specs, _Quiet())  # type: ignore[arg-type]
        ws.write_lock()
    finally:
        ws.close()


def settle() -> None:
    """Wait out the racy window of what was just written: a file changed in the last 2 s is
    never trusted by its stat, so "run again with nothing changed" means a little later."""
    time.sleep(SLACK_NS / 1e9 + 0.2)


def timed(cmd: list[str], cwd: Path, runs: int, *, before: object = None) -> float:
    """Median wall time of ``runs`` processes (output to a pipe, read and dropped)."""
    samples = []
    env = {**os.environ, "PYTHONPATH": str(CODE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measured with bytecode cached, as installed
    for _ in range(runs):
        if callable(before):
            before()
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
        if done.returncode not in (0, 2):
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return statistics.median(samples)


def reconcile(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", *args]


def floor(cwd: Path, runs: int) -> float:
    return timed([sys.executable, "-c", FLOOR], cwd, runs)


def index_cpu(repo: Path) -> tuple[float, float]:
    """CPU seconds of loading every spec in this process without the index, then with it: what
    the index saves, free of start-up and of other jobs' load on a shared machine. The cold load
    runs in this process alone (a forked child's CPU is not this process's)."""
    config = load_config(repo)
    (repo / "state" / INDEX_FILE).unlink(missing_ok=True)
    start = time.process_time()
    load_specs(repo, config, workers=1)
    cold = time.process_time() - start
    start = time.process_time()
    load_specs(repo, config)
    return cold, time.process_time() - start


def measure(
    specs: int, runs: int, linear: bool, *, quick: bool = False
) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """row -> (seconds, floor seconds); and the in-process CPU of a cold and a warm load."""
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        make_repo(repo, specs)
        base = floor(repo, runs)
        rows["floor (read + C-parse every spec)"] = (base, base)
        rows["start-up (reconcile --help)"] = (timed(reconcile("--help"), repo, runs), base)
        rows["validate, cold"] = (timed(reconcile("validate"), repo, runs), base)
        rows["plan, cold (no state)"] = (timed(reconcile("plan"), repo, runs), base)
        (repo / "state").mkdir()  # moves the repo's folder, which speaks for the missing lock
        settle()
        timed(reconcile("plan"), repo, 1)  # writes the spec index (and the memo)
        rows["plan, warm, pending"] = (timed(reconcile("plan"), repo, runs), base)
        materialize(repo)
        settle()
        timed(reconcile("plan"), repo, 1)
        rows["plan, warm, materialized"] = (timed(reconcile("plan"), repo, runs), base)
        rows["status, materialized"] = (timed(reconcile("status"), repo, runs), base)
        if not quick:
            rows["validate, warm (index)"] = (timed(reconcile("validate"), repo, runs), base)
        cpu = index_cpu(repo)
        if linear:
            shutil.rmtree(repo)
            make_repo(repo, specs * 10)
            big = floor(repo, max(1, runs // 2))
            cold = timed(reconcile("plan"), repo, max(1, runs // 2))
            rows[f"plan, cold, {specs * 10:,} specs"] = (cold, big)
            small = rows["plan, cold (no state)"][0]
            rows[f"  vs 10 x the {specs:,} figure (linear: <= 1.2)"] = (cold, small * 10)
    return rows, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--linear", action="store_true", help="also plan at 10 x --specs")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2,000 specs, 3 runs")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose code runs")
    args = parser.parse_args()
    global CODE
    CODE = args.code.resolve()
    specs, runs = (2_000, 3) if args.quick else (args.specs, args.runs)
    # Write the bytecode first: with PYTHONDONTWRITEBYTECODE set (as in a development shell)
    # every measured command compiled reconciler's modules again, about 0.1 s of each.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(CODE / "reconciler")],
                   check=True, capture_output=True)  # fmt: skip
    rows, index_cpu = measure(specs, runs, args.linear, quick=args.quick)
    quick = args.quick
    print(f"specs: {specs:,}   runs: {runs} (medians)   python {sys.version.split()[0]}")
    startup = rows["start-up (reconcile --help)"][0]
    print(f"{'':45s} {'time':>9s}  {'ratio':>6s}  {'work':>6s}  target")
    ok = True
    for row, (seconds, base) in rows.items():
        ratio = seconds / base
        work = f"{max(seconds - startup, 0.0) / base:5.2f}x" if TARGETS.get(row) else ""
        target = TARGETS.get(row, 1.2 if row.startswith(("plan, cold,", "  vs")) else None)
        verdict = ""
        if target is not None:
            verdict = f"<= {target:g}x  " + ("ok" if ratio <= target else "MISS")
            ok = ok and ratio <= target
        print(f"{row:45s} {seconds:7.3f} s  {ratio:5.2f}x  {work:>6s}  {verdict}")
    cold, warm = index_cpu
    index_works = warm <= 0.5 * cold
    print(f"spec index, in-process CPU: load_specs cold {cold:.3f} s, warm {warm:.3f} s "
          f"({warm / cold:.2f}x; at most 0.5x: {'ok' if index_works else 'MISS'})")  # fmt: skip
    if quick:  # the smoke gates on the index alone; the targets are printed, not enforced
        print(f"targets: {'all met' if ok else 'some MISS (see above)'}")
        print("PASS (smoke: the spec index saves the parse)" if index_works else "FAIL")
        return 0 if index_works else 1
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
