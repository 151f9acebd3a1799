"""The last answers of ``plan`` and ``status``, replayed while nothing they read has changed.

A warm ``plan`` of ten thousand specs that would print "No changes" again still imports pydantic,
reads ten thousand rows and builds ten thousand records: seconds of work to say what it said
last time. This memo keeps, in ``state/answer-memo.marshal``, the text a command
printed and its exit code, beside a digest of the stats of everything the answer was made from:
every file and folder under ``specs/`` and the images the specs read, ``reconcile.yaml``,
``reconcile.lock``, the state db and its WAL, the object cache's folders, every output file the
records name, and the reconciler's own source files. A command whose digest, arguments and
environment match replays the answer after stats alone, importing nothing of the engine.

Like the spec index, it is a cache and never state: written only where ``state/`` exists, and
deleting it costs one full run. An answer is kept only when every stat it depends on is older
than the command's start by ``SLACK_NS`` (the racy rule of git and of the spec index): any later
write moves a size, an mtime, a ctime or an inode, so an unchanged digest proves unchanged
inputs. A path that did not exist is covered by its folder's stat (a file created or deleted
there moves it). Answers also depend on the clock (a provider's copy expiring, the day's
spending): each carries the moment it stops holding. Only the plain sqlite state with a local
object cache is memoized; with PostgreSQL or a shared store the rows are always read.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MEMO_FILE = "answer-memo.marshal"
FORMAT = 1
SLACK_NS = 2_000_000_000  # as the spec index's: coarse file systems stamp times this late
FORK_AT = 2_000  # paths to stat before a replay stats them in a forked child (fork: ~2 ms)
# Variables that change from one shell command to the next without changing any answer; the API
# key is left out so that not even a digest of it is written down.
_VOLATILE = frozenset({"_", "OLDPWD", "SHLVL", "GPTPROTO_API_KEY"})
_FIXED = ("reconcile.yaml", "reconcile.lock")
_DB = ("state/reconciler.db", "state/reconciler.db-wal")

Answer = tuple[str, str, int]  # stdout, stderr, exit code


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _sig(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _walk(root: str, out: list[Any], *, depth: int = -1, code: bool = False) -> None:
    """``root`` and every entry under it with its stat, ``depth`` folders down (-1: all); links
    to folders are not followed (as the loader's walk), a link to a file is stat'ed through.
    ``code``: Python sources only (the bytecode cache moves whenever Python writes it). In the
    listing's order: it changes only with the folder, whose own stat then changes too. Each
    folder is listed and stat'ed through its descriptor: a fifth less work than full paths."""
    out.append((root, _stat(root)))
    try:
        # The root through a link as the loader walks it (``specs`` may be a link to a folder);
        # links below it are not followed, as the loader's are not.
        pending = [(os.open(root, os.O_RDONLY | os.O_DIRECTORY), depth)]
    except OSError:
        return  # its stat above says what it is
    while pending:
        fd, left = pending.pop()
        try:
            with os.scandir(fd) as listing:
                items = list(listing)
            for item in items:
                try:
                    if item.is_dir(follow_symlinks=False):
                        if code and item.name == "__pycache__":
                            continue
                        if left != 0:
                            pending.append((os.open(item.name, _DIR, dir_fd=fd), left - 1))
                    elif code and not item.name.endswith(".py"):
                        continue
                    out.append((item.name, _sig(item.stat())))
                except OSError:
                    out.append((item.name, None))
        except OSError:
            out.append(None)  # a folder that cannot be listed now
        finally:
            os.close(fd)


def fingerprint(repo: Path, paths: list[str]) -> list[Any]:
    """Every input's stat: the trees walked, then the db, then ``paths`` (absolute).

    Two stats of 2-3 us per spec (its file, its video) are most of a replay: with thousands of
    ``paths``, a forked child stats them while this process walks the trees (``fanout``; the
    same list either way, so the same digest; a child that fails is done over here)."""
    if len(paths) < FORK_AT:
        return _trees(repo) + _files(paths)
    from . import fanout  # here: a replay of a small repo, and --help, never need it

    if fanout.cores() < 2 or not fanout.can_fork():
        return _trees(repo) + _files(paths)
    done: dict[int, list[Any]] = {}

    def work(part: Sequence[int], forked: bool) -> Any:
        for job in part:  # 0: the trees, here; 1: the paths, in the child
            done[job] = _trees(repo) if job == 0 else _files(paths)
        return {job: done[job] for job in part} if forked else None

    for result in fanout.run([0, 1], work, parts=2):
        done.update(result or {})
    return done[0] + done[1]


def _trees(repo: Path) -> list[Any]:
    root = str(repo)
    stats: list[Any] = []
    _walk(os.path.join(root, "specs"), stats)
    _walk(os.path.join(root, "state", "objects"), stats, depth=0)  # its folders: no object
    _walk(os.path.dirname(os.path.abspath(__file__)), stats, code=True)
    # The db and its WAL by themselves: a write moves one of them (a checkpoint that deletes the
    # WAL writes the db), and their folder moves with every cache written beside them.
    stats.extend((rel, _stat(os.path.join(root, rel))) for rel in _DB)
    return stats


def _files(paths: list[str]) -> list[Any]:
    stats: list[Any] = []
    folders: dict[str, int | None] = {}  # a descriptor per folder: each file stat'ed by name
    try:
        for path in paths:
            folder, name = os.path.split(path)
            if folder not in folders:
                try:
                    folders[folder] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    folders[folder] = None
            fd = folders[folder]
            try:
                stats.append(_sig(os.stat(name, dir_fd=fd)) if fd is not None and name else None)
            except OSError:
                stats.append(None)
            if stats[-1] is None:
                # A missing file's folder speaks for it: a file created or deleted there moves it.
                stats[-1] = (None, _sig(os.fstat(fd)) if fd is not None else _stat(folder))
    finally:
        for fd in folders.values():
            if fd is not None:
                os.close(fd)
    return stats


def _digest(stats: list[Any]) -> bytes:
    return hashlib.sha256(marshal.dumps(stats)).digest()


def _newest(stats: list[Any]) -> int:
    """The latest mtime or ctime among the stats (a stat is 4 numbers, an entry a pair)."""
    found = (item if len(item) == 4 else item[1] for item in stats if item is not None)
    return max((max(st[1], st[2]) for st in found if st is not None), default=0)


def key(args: tuple[object, ...]) -> str:
    """What an answer is for beside its inputs: the command and its arguments (``canonical``),
    the environment (where the state lives, the width of the output...), and this Python."""
    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE)
    blob = repr((FORMAT, args, env, sys.version, sys.executable))
    return hashlib.sha256(blob.encode()).hexdigest()


def canonical(
    command: str, *, fmt: str | None = None, as_json: bool = False, detailed: bool = False,
    targets: tuple[str, ...] = (), replace: tuple[str, ...] = (), retry_failed: bool = False,
    resubmit_unknown: bool = False,
) -> tuple[object, ...]:  # fmt: skip
    """A command's options as its answer depends on them: the same from click's parse (the
    commands) and from ``parse_argv`` (before click is imported)."""
    if command == "status":
        return ("status", as_json)
    fmt = "json" if as_json and fmt is None else fmt or "text"
    names = (tuple(sorted(set(targets))), tuple(sorted(set(replace))))
    return ("plan", fmt, detailed, *names, retry_failed, resubmit_unknown)


_FLAGS = {
    "plan": {"--json": "as_json", "--detailed-exitcode": "detailed",
             "--retry-failed": "retry_failed", "--resubmit-unknown": "resubmit_unknown"},
    "status": {"--json": "as_json"},
}  # fmt: skip
_VALUES = {"plan": {"--format": "fmt", "--target": "targets", "--replace": "replace"}, "status": {}}


def parse_argv(argv: list[str]) -> tuple[str, tuple[object, ...]] | None:
    """(repo, ``canonical`` options) of a plain ``[--repo DIR] plan|status [OPTION]...``; None
    for anything else (help, --out, --sim, a typo...), which goes to click as always."""
    repo, args = ".", list(argv)
    if args and args[0].startswith("--repo="):
        repo, args = args[0][len("--repo=") :], args[1:]
    elif args[:1] == ["--repo"] and len(args) > 1:
        repo, args = args[1], args[2:]
    if not repo or not args or args[0] not in _FLAGS:
        return None
    command, rest = args[0], args[1:]
    options: dict[str, Any] = {}
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name in _FLAGS[command] and not eq:
            options[_FLAGS[command][name]] = True
            continue
        field = _VALUES[command].get(name)
        if field is None:
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        if field == "fmt":
            if "fmt" in options or value not in ("text", "json", "markdown"):
                return None
            options["fmt"] = value
        else:
            options[field] = (*options.get(field, ()), value)
    return repo, canonical(command, **options)


_missed: Memo | None = None  # what replay_argv looked in and missed, for the command itself


def replay_argv(argv: list[str]) -> None:
    """``python -m reconciler`` and ``reconcile``: answer from the memo, without importing
    click or any command, when the command line is a plain plan or status whose answer holds;
    otherwise return, and click runs the command."""
    global _missed
    parsed = parse_argv(argv)
    if parsed is None or not os.path.isdir(parsed[0]) or sys.stdout is None or sys.stdout.isatty():
        return
    memo = Memo(Path(os.path.realpath(parsed[0])), parsed[1])
    answer = memo.replay()
    if answer is None:
        _missed = memo  # the command would look again and miss again: it takes this one
        return
    stdout, stderr, code = answer
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    sys.exit(code)


def take_missed(repo: Path, args: tuple[object, ...]) -> Memo | None:
    """The memo ``replay_argv`` just looked in for this very command and found no answer in
    (None: the command looks itself). Its whole tree was stat'ed for that: not twice."""
    global _missed
    memo, _missed = _missed, None
    return memo if memo is not None and memo.repo == repo and memo.key == key(args) else None


class Memo:
    """The memo of one repo, read at a command's start."""

    def __init__(self, repo: Path, args: tuple[object, ...]) -> None:
        self.started_ns = time.time_ns()
        self.repo = repo
        self.path = repo / "state" / MEMO_FILE
        self.key = key(args)
        self.data: dict[str, object] = {}
        with contextlib.suppress(Exception):  # missing, corrupt, another layout: a full run
            data = marshal.loads(self.path.read_bytes())
            if isinstance(data, dict) and data.get("format") == FORMAT:
                self.data = data

    def replay(self) -> Answer | None:
        """The answer recorded for this command if nothing it read has changed since."""
        try:
            until_ns, stdout, stderr, code = self.data["answers"][self.key]  # type: ignore[index]
            paths = list(self.data["paths"])  # type: ignore[call-overload]
            if time.time_ns() >= until_ns:
                return None
            digest = _digest(fingerprint(self.repo, paths))
            if digest != self.data.get("digest"):
                return None
            return (str(stdout), str(stderr), int(code))
        except Exception:  # none for this command, or a memo of another shape: a full run
            return None

    def record(self, answer: Answer, *, paths: list[str], until_ns: int) -> None:
        """Keep this answer if every input is old enough to be trusted by its stat (else the
        next run computes it again); the answers of other commands stay while the inputs are
        the same. A failure to write only costs the next run."""
        if not (self.repo / "state").is_dir():
            return  # never create state in a fresh clone
        root = str(self.repo)
        paths = [os.path.join(root, p) for p in sorted({*_FIXED, *paths})]
        stats = fingerprint(self.repo, paths)
        if _newest(stats) >= self.started_ns - SLACK_NS:
            return
        digest, answers = _digest(stats), self.data.get("answers")
        if self.data.get("digest") != digest or self.data.get("paths") != paths:
            answers = None
        answers = dict(answers) if isinstance(answers, dict) else {}
        answers[self.key] = (until_ns, *answer)
        blob = marshal.dumps(
            {"format": FORMAT, "digest": digest, "paths": paths, "answers": answers}
        )
        write_cache(self.path, blob)


def write_cache(path: Path, blob: bytes) -> bool:
    """Put a cache file in ``state/`` whole or not at all (a temp file renamed over it), with no
    fsync: losing it costs one full run. Shared with the spec index. False when it failed."""
    import tempfile  # here only: a replay never writes

    tmp = None
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, path)
        return True
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return False
