"""Benchmark: `reconcile apply` of many specs stays near the ideal, on little CPU per spec.

Measures, in one run on this machine (medians of ``--runs`` apply processes, 5 by default, as
issue 11's table is measured; one with ``--quick``), a real `reconcile apply --concurrency C
--poll-interval P` process applying N new specs against the simulator (in this process,
stand-in videos, operations of L seconds):
- wall time, from the process's start to its exit, against the ideal: ceil(N / C) waves of one
  operation's latency plus one poll interval (the poll that sees the operation done lands up to
  one interval after it finished). Start-up (imports, loading the specs, the plan) is part of the
  measured time, not of the ideal: it is overhead like any other;
- the apply process's CPU time (user + system) per spec;
- what it cost the wire: TCP connections the simulator accepted, requests by kind.

Target (issue 11): wall <= 1.1x ideal and <= 5 ms of CPU per spec. `--quick` (CI smoke, 200
specs) prints the same figures and fails only on a wrong result (a spec not converged, a
duplicate POST): a shared CI machine's load moves the ratio by 2x.

    python bench/apply_scale.py [--specs 1000] [--concurrency 50] [--latency 1.0] [--runs 5]
                                [--quick]
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from download_memory import sim_env  # noqa: E402  (bench/ is the script's folder)

from reconciler.sim import Simulator  # noqa: E402

KEY = "bench-key"
SPEC = "name: {name}\nmodel: veo-3.1-fast-generate-preview\nprompt: Scale bench clip {i}.\n"
POLL = 0.2


def children_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


# How fast this machine runs Python now: the CPU time of a fixed loop, in a child like the apply.
# A shared VM's speed swings between sittings (the same apply took 4.4 and 7.5 ms per spec an
# hour apart): figures from two sittings compare only alongside this one.
SPEED = """
import resource
u0 = resource.getrusage(resource.RUSAGE_SELF)
x = 0
for i in range(5_000_000):
    x += i
u1 = resource.getrusage(resource.RUSAGE_SELF)
print(u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime)
"""

# The disk's part, measured in the same run: each video apply wrote, written again as apply
# writes it (twice: the cache object and the output's copy, each a new temp file renamed into
# place), then every file and folder fsynced once, as the syncer does. Run in a child of its
# own after the apply, beside its folders, so its CPU is read as the apply's was.
FILES_FLOOR = """
import os, resource, sys
root, videos = sys.argv[1], sys.argv[2]
bodies = [open(os.path.join(videos, n), "rb").read() for n in sorted(os.listdir(videos))
          if n.endswith(".mp4")]
u0 = resource.getrusage(resource.RUSAGE_SELF)
synced = []
for i, body in enumerate(bodies):
    for folder, name in ((f"objects/{i % 256:02x}", f"{i:064x}"), ("videos", f"v{i}.mp4")):
        folder = os.path.join(root, folder)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".incoming.{i}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, body)
        os.close(fd)
        os.replace(tmp, os.path.join(folder, name))
        synced.append(os.path.join(folder, name))
for path in synced + sorted({os.path.dirname(p) for p in synced}):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
u1 = resource.getrusage(resource.RUSAGE_SELF)
print(u1.ru_utime - u0.ru_utime, u1.ru_stime - u0.ru_stime)
"""


def run(specs: int, concurrency: int, latency: float, repo: Path) -> dict[str, float]:
    with Simulator(api_key=KEY, latency=latency, video="standin") as sim:
        (repo / "specs").mkdir(parents=True)
        for i in range(specs):
            (repo / "specs" / f"s{i}.yaml").write_text(SPEC.format(name=f"s{i}", i=i))
        env = sim_env(sim, key=KEY)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # measured with bytecode cached, as installed
        args = [sys.executable, "-m", "reconciler", "apply", "--yes", "--concurrency",
                str(concurrency), "--poll-interval", str(POLL)]  # fmt: skip
        speed = subprocess.run([sys.executable, "-c", SPEED], capture_output=True, text=True,
                               check=True)  # fmt: skip
        cpu0 = children_cpu()
        start = time.monotonic()
        proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        user, system = (after - before for after, before in zip(children_cpu(), cpu0, strict=True))
        if proc.returncode != 0:
            said = [ln for ln in proc.stderr.splitlines() if not ln.startswith("INFO")]
            tail = "\n".join(said[-15:])
            raise SystemExit(f"apply failed ({proc.returncode}):\n{tail}")
        videos = len(list((repo / "videos").iterdir()))
        stats = sim.stats()
        duplicates = sum(max(0, sim.posts_for(f"clip {i}.") - 1) for i in range(specs))
        floor = subprocess.run([sys.executable, "-c", FILES_FLOOR, str(repo / "floor"),
                                str(repo / "videos")], capture_output=True, text=True, check=True)  # fmt: skip
        files_user, files_system = map(float, floor.stdout.split())
    return {
        "wall": wall,
        "cpu": user + system,
        "user": user,
        "system": system,
        "files": files_user + files_system,
        "speed": float(speed.stdout),
        "videos": videos,
        "duplicates": duplicates,
        "posts": stats["paid_posts"],
        "polls": stats["polls"],
        "downloads": stats["downloads"],
        "connections": stats["connections"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per operation")
    parser.add_argument("--runs", type=int, default=5, help="runs whose medians are judged")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 200 specs, one run")
    args = parser.parse_args()
    specs = 200 if args.quick else args.specs
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    runs = 1 if args.quick else args.runs
    # Write the bytecode first, once (an unset PYTHONDONTWRITEBYTECODE alone would leave the
    # first measured run compiling): otherwise 0.1 s of compiling counts against it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "reconciler")],
                   check=True, capture_output=True)  # fmt: skip
    results = []
    # Every run's repo is deleted after the last run, not before the next: on a file system that
    # skips recently deleted inodes when it makes a file (ext4 without a journal, as here), a run
    # made right after the last one's 3,000 files were deleted paid 1-3 ms more per spec.
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(runs):
            repo = Path(scratch) / f"run{index + 1}"
            results.append(run(specs, args.concurrency, args.latency, repo))
            if runs > 1:
                one = results[-1]
                print(f"run {index + 1}: wall {one['wall']:5.1f} s, cpu "
                      f"{one['cpu'] * 1000 / specs:4.1f} ms per spec (user "
                      f"{one['user'] * 1000 / specs:.1f} + system {one['system'] * 1000 / specs:.1f}; "
                      f"the disk's part {one['files'] * 1000 / specs:.1f}; the loop "
                      f"{one['speed'] * 1000:.0f} ms)", flush=True)  # fmt: skip
    # The medians of the runs, each figure on its own (as the table is measured).
    result = {key: statistics.median(r[key] for r in results) for key in results[0]}
    waves = math.ceil(specs / args.concurrency)
    ideal = waves * (args.latency + POLL)
    ratio = result["wall"] / ideal
    cpu_ms = result["cpu"] * 1000 / specs
    print(f"specs: {specs}, --concurrency {args.concurrency}, --poll-interval {POLL}, "
          f"operations of {args.latency:g} s" + (f"; medians of {runs} runs" if runs > 1 else ""))  # fmt: skip
    print(f"ideal  {waves} waves x ({args.latency:g} s + {POLL} s): {ideal:6.1f} s")
    print(f"apply  wall {result['wall']:6.1f} s, ratio {ratio:4.2f}x ideal   target: <= 1.1x")
    print(f"cpu    {result['cpu']:6.1f} s: {cpu_ms:5.1f} ms per spec "
          f"({result['cpu'] / result['wall'] * 100:.0f}% of one core)   target: <= 5 ms")  # fmt: skip
    print(f"       user {result['user'] * 1000 / specs:.1f} + system "
          f"{result['system'] * 1000 / specs:.1f} ms per spec; of it, the disk's own part (each "
          "video written as")  # fmt: skip
    print(f"       two new files, renamed, fsynced; measured in this run): "
          f"{result['files'] * 1000 / specs:.1f} ms per spec")  # fmt: skip
    print(f"speed  a fixed Python loop (5M additions): {result['speed'] * 1000:.0f} ms of CPU here, "
          "now (the VM's speed moves between sittings)")  # fmt: skip
    print(f"wire   {result['connections']:.0f} TCP connections, {result['posts']:.0f} POSTs, "
          f"{result['polls']:.0f} polls ({result['polls'] / specs:.1f} per operation), "
          f"{result['downloads']:.0f} downloads")  # fmt: skip
    wrong = [
        r for r in results
        if not (r["videos"] == specs and r["duplicates"] == 0 and r["posts"] == specs)
    ]  # fmt: skip
    correct = not wrong
    for r in wrong:
        print(f"WRONG: {r['videos']:.0f} videos, {r['duplicates']:.0f} duplicate POSTs")
    # The smoke checks the result (CI machines vary); the full run, the targets too.
    ok = correct and (args.quick or (ratio <= 1.1 and cpu_ms <= 5.0))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
