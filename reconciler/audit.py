"""Read-mostly looks at a repo's state: ``status`` rows, ``verify`` (do the outputs hold what the
specs asked for?) and ``gc`` (which cached videos does nothing need any more?).

Both work from the same records the planner uses, and neither calls the API.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import lockfile
from .facts import REMOTE_FILE_SECONDS, frame_size
from .files import is_regular, sha256_file
from .index import SpecIndex
from .lifecycle import TIMESTAMP, Generation, State, expiry_text, parse_time
from .lockfile import LockEntry
from .mp4 import probe
from .spec import Desired
from .store import Output, as_seen
from .workspace import Workspace

DURATION_SLACK = 0.5  # seconds: container durations are rounded to frames


def current_output(
    name: str, outputs: dict[str, Output], lock: dict[str, LockEntry]
) -> Output | LockEntry | None:
    """The file a name has now: the state's record, else (a fresh clone) the lock's."""
    return outputs.get(name) or lock.get(name)


Records = tuple[dict[str, Generation], dict[str, Output], dict[str, LockEntry]]


def read_records(ws: Workspace) -> Records:
    """The generations (as ``plan`` and ``status`` show them), the outputs and the lock."""
    return as_seen(ws.gens), ws.tree.outputs(), lockfile.read(ws.lock_path)


def status_rows(
    ws: Workspace, specs: list[Desired], *, invalid_files: bool = False,
    read: Records | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per spec (and per output whose spec is gone), for ``reconcile status``.

    The file is looked at too: a materialized spec whose video was deleted or edited says so.
    """
    gens, outputs, lock = read or read_records(ws)
    rows = []
    for spec in sorted(specs, key=lambda s: s.name):
        gen = gens.get(spec.key)
        current = current_output(spec.name, outputs, lock)
        placed = outputs.get(spec.name) if current and current.spec_key == spec.key else None
        locked = current if current and current.spec_key == spec.key else None
        path = locked.path if locked else None
        # The file in place names its bytes (a pinned take may differ from the latest take).
        sha = locked.sha256 if locked else gen.sha256 if gen else None
        state: str = gen.state if gen else State.MATERIALIZED if locked else State.NEW
        blocking = (State.FAILED, State.UNKNOWN, State.PENDING)
        error = gen.error if gen and gen.state in blocking else None
        if state is State.MATERIALIZED:
            state, error = _file_state(ws, path, sha, placed)
        uri, expires = _remote(gen, locked)
        rows.append({
            "name": spec.name, "state": state, "path": path, "sha256": sha,
            "bytes": gen.bytes if gen else None, "error": error, "spec_key": spec.key,
            "operation": gen.operation if gen else None, "file": spec.file,
            "uri": uri, "expires": expires, "source": spec.source,
        })  # fmt: skip
    wanted = {s.name for s in specs}
    for name, out in sorted(outputs.items()):
        if name not in wanted:
            why = (
                "not in any valid spec (some spec files are invalid)"
                if invalid_files
                else "spec removed; `apply` removes the file"
            )
            rows.append({"name": name, "state": "orphaned", "path": out.path, "sha256": out.sha256,
                         "bytes": out.bytes, "error": why, "spec_key": out.spec_key,
                         "operation": None, "file": None, "uri": None, "expires": None,
                         "source": None})  # fmt: skip
    return rows


def memo_inputs(
    ws: Workspace, specs: list[Desired], read: Records, index: SpecIndex | None, since_ns: int
) -> tuple[list[str], int] | None:
    """What a ``plan`` or ``status`` answer was made from beside the files every memo stats
    (the outputs the records name, the images the specs read), and the moment (ns) it stops
    holding: a provider's copy expiring, the next UTC day for the spending shown. None when
    the answer must not be memoized: rows that another host may change (PostgreSQL, a shared
    object store), or a submission whose claim goes stale with time."""
    gens, outputs, lock = read
    if ws.gens is not ws.tree or ws.cache.remote is not None or ws.sandbox or index is None:
        return None
    if any(g.state is State.SUBMITTING for g in gens.values()):
        return None
    paths = {o.path for o in outputs.values()} | {e.path for e in lock.values()}
    for spec in specs:
        gen = gens.get(spec.key)
        if gen is not None and gen.sha256:
            paths.add(ws.output_path(spec.name, gen.sha256))
    for read_file in index.entries.values():
        paths.update(read_file.images)
        paths.update(read_file.targets)
    since = datetime.fromtimestamp(since_ns / 1e9, UTC)
    kept = timedelta(seconds=REMOTE_FILE_SECONDS)  # a copy expires this long after it was made
    moments = [
        datetime.combine(since.date() + timedelta(days=1), datetime.min.time(), UTC),
        _first_after([g.remote_until for g in gens.values()], since),
        _first_after([g.finished_at for g in gens.values() if not g.remote_until], since, kept),
        _first_after([e.generated for e in lock.values()], since, kept),
        _first_after([e.expires for e in lock.values()], since),
    ]
    until = min(m for m in moments if m is not None)
    return sorted(paths), int(until.timestamp() * 1e9)


def _first_after(
    stamps: list[str | None], after: datetime, shift: timedelta = timedelta()
) -> datetime | None:
    """The earliest of these times plus ``shift`` that is later than ``after``. The tool's own
    timestamps (fixed width, UTC) order as text: of those, only the earliest is parsed."""
    since = after - shift
    mark = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    texts = [s for s in stamps if s]
    found = []
    for ours in sorted(s for s in texts if TIMESTAMP.match(s) and s > mark):
        if (moment := parse_time(ours)) is not None:
            found.append(moment)
            break
    for other in texts:
        if not TIMESTAMP.match(other) and (moment := parse_time(other)) is not None:
            found += [moment] if moment > since else []
    return min(found) + shift if found else None


def _remote(gen: Generation | None, locked: Output | LockEntry | None) -> tuple[str | None, ...]:
    """The provider's copy of a spec's video and when it goes: from the state, else the lock."""
    if gen is not None and gen.video_uri:
        return gen.video_uri, expiry_text(gen)
    if isinstance(locked, LockEntry):
        return locked.uri, locked.expires
    return None, None


def _file_state(
    ws: Workspace, path: str | None, sha: str | None, placed: Output | None
) -> tuple[str, str | None]:
    """materialized only when the file is there with the recorded bytes (stat first, then hash)."""
    if path is None:
        return "cached", "bytes known, file not placed yet; `apply` places it"
    try:
        st = (ws.repo / path).stat()
    except OSError:
        if sha and ws.cache.has(sha):
            return "missing", "the file is gone; `apply` restores it from the cache"
        return (
            "missing",
            "the file and its cached copy are gone; `apply` downloads it again or, "
            "if the provider deleted it too, plans a paid regeneration",
        )
    if not stat.S_ISREG(st.st_mode):
        # A device, a FIFO or a folder: reading it could hang or never end; say so instead.
        return "modified", "not a regular file (a device, FIFO or folder); `apply` replaces it"
    if placed and (st.st_size, st.st_mtime_ns) == (placed.size, placed.mtime_ns):
        return State.MATERIALIZED, None
    if sha256_file(ws.repo / path)[0] != sha:
        return "modified", "the file's bytes changed; `apply` restores the generated video"
    return State.MATERIALIZED, None


@dataclass
class Finding:
    name: str
    path: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def expected_size(spec: Desired) -> tuple[int, int]:
    return frame_size(spec.resolution, spec.parameters.get("aspectRatio", "16:9"))


def verify(ws: Workspace, specs: list[Desired]) -> list[Finding]:
    """Re-hash every output and check its container against its spec."""
    outputs = ws.tree.outputs()
    lock = lockfile.read(ws.lock_path)
    findings = []
    for spec in sorted(specs, key=lambda s: s.name):
        current = current_output(spec.name, outputs, lock)
        finding = Finding(spec.name, current.path if current else None)
        findings.append(finding)
        if current is None:
            finding.problems.append("not materialized")
            continue
        path, sha = current.path, current.sha256
        if current.spec_key != spec.key:
            finding.problems.append("made from an older version of the spec (run apply)")
        target = ws.repo / path
        if not target.exists():
            finding.problems.append("file missing")
            continue
        if not is_regular(target):
            finding.problems.append("not a regular file (a device, FIFO or folder)")
            continue
        if sha256_file(target)[0] != sha:
            finding.problems.append("bytes differ from the recorded sha256")
        finding.problems.extend(_container_problems(target, spec))
    return findings


def _container_problems(path: Path, spec: Desired) -> list[str]:
    try:
        info = probe(path)
    except (ValueError, OSError) as exc:
        return [str(exc)]
    problems = []
    if (info.width, info.height) != expected_size(spec):
        want = "x".join(map(str, expected_size(spec)))
        problems.append(f"{info.width}x{info.height}, expected {want}")
    # An extension is its source plus about 7 s: known for a chain of specs; for a provider URI
    # only the lower bound is.
    if spec.length is not None and abs(info.duration_s - spec.length) > DURATION_SLACK:
        problems.append(f"{info.duration_s:.2f} s long, expected {spec.length:g} s")
    if spec.length is None and info.duration_s < spec.duration - DURATION_SLACK:
        problems.append(f"{info.duration_s:.2f} s long, shorter than an extension can be")
    return problems


@dataclass
class Garbage:
    sha256: str
    size: int
    where: str = ""  # a shared object's URL


def needed(ws: Workspace, specs: list[Desired]) -> set[str]:
    """The objects a current spec, output or lock entry of this tree refers to."""
    wanted = {s.key for s in specs}
    keep = {g.sha256 for g in ws.gens.generations().values() if g.spec_key in wanted and g.sha256}
    keep |= {o.sha256 for o in ws.tree.outputs().values()}
    keep |= {e.sha256 for e in lockfile.read(ws.lock_path).values()}
    return keep


def collect(ws: Workspace, keep: set[str]) -> list[Garbage]:
    """Cached objects outside ``keep`` (``needed``: what a current spec, output or lock entry
    refers to)."""
    garbage = []
    root = ws.cache.root
    if root.is_dir():
        for prefix in sorted(root.iterdir()):
            if not prefix.is_dir() or len(prefix.name) != 2:
                continue
            for obj in sorted(prefix.iterdir()):
                sha = prefix.name + obj.name
                if sha not in keep:
                    garbage.append(Garbage(sha, obj.stat().st_size))
    return garbage


def delete(ws: Workspace, garbage: list[Garbage]) -> None:
    for item in garbage:
        ws.cache.path(item.sha256).unlink(missing_ok=True)


def collect_shared(ws: Workspace, keep: set[str]) -> list[Garbage]:
    """Objects in the team's shared store outside ``keep``, what THIS tree refers to. Other
    clones, branches and CI runners cannot be seen from here: what they need is garbage here."""
    remote = ws.cache.remote
    if remote is None:
        return []
    listed = sorted(remote.listing())
    return [Garbage(sha, size, remote.where(sha)) for sha, size in listed if sha not in keep]


def delete_shared(ws: Workspace, garbage: list[Garbage]) -> None:
    remote = ws.cache.remote
    if remote is not None:
        for item in garbage:
            remote.delete(item.sha256)
