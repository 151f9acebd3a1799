"""The answer memo (state/answer-memo.marshal): `plan` and `status` run again with nothing changed
replay their last answer after stats alone, and never replay one whose inputs moved.

Real repos, real state dbs and the CLI in this process. Whether a run replayed is observed through
the spec index: a full run rewrites a deleted index (state/ exists), a replay reads no spec and
writes nothing. The racy window (SLACK_NS, 2 s) is shrunk to nothing where a test needs files it
just wrote to count as settled; one test keeps it, to show fresh files are never trusted.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, SPEC, Repo, png_bytes

from reconciler import lockfile, memo
from reconciler.audit import memo_inputs, read_records
from reconciler.events import Reporter
from reconciler.facts import REMOTE_FILE_SECONDS
from reconciler.index import INDEX_FILE
from reconciler.lifecycle import Event, State
from reconciler.memo import MEMO_FILE
from reconciler.sqlite_store import SqliteStore
from reconciler.workspace import Workspace


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written a moment ago count as settled (on ext4 their times are exact to the ns)."""
    monkeypatch.setattr(memo, "SLACK_NS", 0)


def spec(name: str, prompt: str = "A lighthouse at dusk.") -> str:
    return SPEC.format(name=name, prompt=prompt).lstrip()


def materialized(
    repo: Repo, names: tuple[str, ...] = ("a", "b"), *, generated: str | None = None
) -> None:
    """Specs with their videos, the lock naming them and the state its import records (no API);
    ``generated``: when the provider made them (its copy expires two days later)."""
    for name in names:
        repo.write(f"specs/{name}.yaml", spec(name, f"Clip {name}, a harbour at dusk."))
    ws = Workspace(repo.path)
    try:
        specs = ws.load().specs
        entries = []
        for s in specs:
            data = f"video of {s.name}".encode()
            sha = hashlib.sha256(data).hexdigest()
            repo.write_bytes(ws.output_path(s.name, sha), data)
            entries.append(lockfile.LockEntry(s.name, s.key, ws.output_path(s.name, sha), sha,
                                              len(data), s.model, "operations/x" if generated
                                              else None, generated))  # fmt: skip
        lockfile.write(ws.lock_path, entries)
        ws.import_lock(specs, Reporter())
        ws.write_lock()
    finally:
        ws.close()


def run(repo: Repo, *args: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run a command with the spec index deleted first: (its result, whether it replayed)."""
    index = repo.path / "state" / INDEX_FILE
    index.unlink(missing_ok=True)
    result = repo.run(*args)
    assert result.returncode in (0, 2), result.stdout + result.stderr
    return result, not index.exists()


def video(repo: Repo, name: str) -> Path:
    return next((repo.path / "videos").glob(f"{name}.*.mp4"))


def test_plan_and_status_replay_their_answer_while_nothing_changed(
    offline_repo: Repo, settled: None
) -> None:
    """The second run of each prints what the first printed, exit code included, from the memo."""
    materialized(offline_repo)
    for args in (("plan",), ("plan", "--json"), ("plan", "--detailed-exitcode"), ("status",),
                 ("status", "--json")):  # fmt: skip
        first, replayed = run(offline_repo, *args)
        assert not replayed
        again, replayed = run(offline_repo, *args)
        assert replayed, args
        assert (again.stdout, again.stderr, again.returncode) == (
            first.stdout, first.stderr, first.returncode,
        )  # fmt: skip
    assert (offline_repo.path / "state" / MEMO_FILE).is_file()


def test_a_pending_plan_replays_with_its_exit_code(offline_repo: Repo, settled: None) -> None:
    """Changes to make are an answer like any other: exit 2 under --detailed-exitcode again."""
    offline_repo.write("specs/a.yaml", spec("a"))
    (offline_repo.path / "state").mkdir()
    first, _ = run(offline_repo, "plan", "--detailed-exitcode")
    again, replayed = run(offline_repo, "plan", "--detailed-exitcode")
    assert replayed and first.returncode == again.returncode == 2
    assert again.stdout == first.stdout and "to create" in again.stdout


def _edit_spec(repo: Repo) -> None:
    repo.write("specs/a.yaml", spec("a", "Clip a, a harbour at dawn, in fog."))


def _new_spec(repo: Repo) -> None:
    repo.write("specs/more/c.yaml", spec("c"))


def _delete_spec(repo: Repo) -> None:
    (repo.path / "specs" / "b.yaml").unlink()


def _move_spec(repo: Repo) -> None:
    (repo.path / "specs" / "deeper").mkdir()
    (repo.path / "specs" / "b.yaml").rename(repo.path / "specs" / "deeper" / "b.yaml")


def _touch_output(repo: Repo) -> None:
    path = video(repo, "a")
    path.write_bytes(b"edited in place")


def _date_output(repo: Repo) -> None:
    when = time.time_ns() - 3_600_000_000_000
    os.utime(video(repo, "a"), ns=(when, when))


def _delete_output(repo: Repo) -> None:
    video(repo, "b").unlink()


def _edit_lock(repo: Repo) -> None:
    lock = repo.path / lockfile.LOCK_FILE
    lock.write_text(lock.read_text().replace("name: a", "name: a-renamed", 1))


def _change_config(repo: Repo) -> None:
    repo.write("reconcile.yaml", "defaults:\n  resolution: 1080p\n")


def _other_process_writes_state(repo: Repo) -> None:
    store = SqliteStore(repo.path / "state" / "reconciler.db")
    try:
        store.delete_output("b")  # as if its file were never placed here
    finally:
        store.close()


def _drop_cached_object(repo: Repo) -> None:
    objects = repo.path / "state" / "objects"
    next(p for p in objects.rglob("*") if p.is_file()).unlink()


CHANGES = [
    _edit_spec, _new_spec, _delete_spec, _move_spec, _touch_output, _date_output, _delete_output, _edit_lock,
    _change_config, _other_process_writes_state, _drop_cached_object,
]  # fmt: skip


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("command", ["plan", "status"])
def test_any_change_to_an_input_is_never_answered_from_the_memo(
    offline_repo: Repo, settled: None, change: object, command: str
) -> None:
    """After the change the command computes again, and prints what a run without memo prints."""
    materialized(offline_repo)
    run(offline_repo, command)
    assert run(offline_repo, command)[1]
    assert callable(change)
    change(offline_repo)
    after, replayed = run(offline_repo, command)
    assert not replayed
    (offline_repo.path / "state" / MEMO_FILE).unlink()
    fresh, _ = run(offline_repo, command)
    assert (after.stdout, after.returncode) == (fresh.stdout, fresh.returncode)


def test_an_edited_image_is_never_answered_from_the_memo(offline_repo: Repo, settled: None) -> None:
    """A first frame's bytes are in the spec key: editing the image re-plans its spec."""
    offline_repo.write_bytes("assets/first.png", png_bytes(1))
    offline_repo.write("specs/a.yaml", spec("a") + "image: ../assets/first.png\n")
    (offline_repo.path / "state").mkdir()
    first, _ = run(offline_repo, "plan", "--json")
    assert run(offline_repo, "plan", "--json")[1]
    offline_repo.write_bytes("assets/first.png", png_bytes(2))
    after, replayed = run(offline_repo, "plan", "--json")
    assert not replayed and after.stdout != first.stdout


def test_a_state_row_in_flight_or_a_shared_store_is_never_memoized(
    offline_repo: Repo, settled: None
) -> None:
    """A submission's claim goes stale with time: while one is recorded, every run reads rows."""
    materialized(offline_repo, ("a",))
    offline_repo.write("specs/b.yaml", spec("b", "A harbour at night."))
    ws = Workspace(offline_repo.path)
    try:
        b = next(s for s in ws.load().specs if s.name == "b")
        assert ws.gens.transition(b.key, Event.SUBMIT, seed=ws.seed(b)) is not None
        assert ws.gens.get(b.key).state is State.SUBMITTING  # type: ignore[union-attr]
    finally:
        ws.close()
    run(offline_repo, "plan")
    assert not run(offline_repo, "plan")[1]


def test_a_shared_postgresql_state_is_always_read(
    offline_repo: Repo, settled: None, pg_url: str
) -> None:
    """Another host may change the rows at any time, with no file here to show it: no memo."""
    offline_repo.write("specs/a.yaml", spec("a"))
    (offline_repo.path / "state").mkdir()
    env = offline_repo.env(RECONCILE_STATE=pg_url)
    for command in ("plan", "status", "plan", "status"):
        (offline_repo.path / "state" / INDEX_FILE).unlink(missing_ok=True)
        assert offline_repo.run(command, env=env).returncode == 0
        assert (offline_repo.path / "state" / INDEX_FILE).exists()  # computed, not replayed
    assert not (offline_repo.path / "state" / MEMO_FILE).exists()


def test_an_answer_stops_at_its_moment(offline_repo: Repo, settled: None) -> None:
    """A provider's copy expiring (or the next day's spending) ends an answer's validity."""
    offline_repo.write("specs/a.yaml", spec("a"))
    (offline_repo.path / "state").mkdir()
    kept = memo.Memo(offline_repo.path, ("plan",))
    kept.record(("out", "", 0), paths=[], until_ns=time.time_ns() + 60_000_000_000)
    assert memo.Memo(offline_repo.path, ("plan",)).replay() == ("out", "", 0)
    kept.record(("out", "", 0), paths=[], until_ns=time.time_ns())
    assert memo.Memo(offline_repo.path, ("plan",)).replay() is None


def test_an_answer_holds_until_the_first_provider_copy_expires(offline_repo: Repo) -> None:
    """The moment a plan's reasons change by the clock alone (a copy the provider deletes) is
    when its answer stops; else the next UTC day (the spending shown)."""
    now = datetime.now(UTC).replace(microsecond=0)
    made = now - timedelta(seconds=REMOTE_FILE_SECONDS) + timedelta(minutes=5)
    materialized(offline_repo, generated=made.strftime("%Y-%m-%dT%H:%M:%SZ"))
    ws = Workspace(offline_repo.path, read_only=True)
    try:
        result = ws.load()
        inputs = memo_inputs(ws, result.specs, read_records(ws), result.index, time.time_ns())
    finally:
        ws.close()
    assert inputs is not None
    assert inputs[1] == int((now + timedelta(minutes=5)).timestamp() * 1e9)
    assert sorted(p for p in inputs[0] if p.startswith("videos/")) == [
        video(offline_repo, n).relative_to(offline_repo.path).as_posix() for n in ("a", "b")
    ]


def test_files_written_within_the_racy_window_are_never_trusted(offline_repo: Repo) -> None:
    """A spec saved in the last 2 s may change again without its stat showing it: no memo."""
    offline_repo.write("specs/a.yaml", spec("a"))
    (offline_repo.path / "state").mkdir()
    run(offline_repo, "plan")
    assert not (offline_repo.path / "state" / MEMO_FILE).exists()
    assert not run(offline_repo, "plan")[1]


def test_a_fresh_clone_gets_no_state_from_plan_status_or_validate(
    offline_repo: Repo, settled: None
) -> None:
    """The memo is a cache like the spec index: written only where state/ already exists."""
    offline_repo.write("specs/a.yaml", spec("a"))
    for command in ("plan", "status", "validate", "plan", "status"):
        assert offline_repo.run(command).returncode == 0
    assert not (offline_repo.path / "state").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan"], (".", ("plan", "text", False, (), (), False, False))),
        (["--repo", "r", "plan", "--json"], ("r", ("plan", "json", False, (), (), False, False))),
        (["--repo=r", "plan", "--format=markdown", "--json"],
         ("r", ("plan", "markdown", False, (), (), False, False))),
        (["plan", "--target", "b", "--target=a", "--replace", "a", "--detailed-exitcode"],
         (".", ("plan", "text", True, ("a", "b"), ("a",), False, False))),
        (["plan", "--retry-failed", "--resubmit-unknown"],
         (".", ("plan", "text", False, (), (), True, True))),
        (["status", "--json"], (".", ("status", True))),
        (["status"], (".", ("status", False))),
        (["plan", "--out", "p.json"], None),
        (["plan", "--sim"], None),
        (["plan", "--help"], None),
        (["plan", "-h"], None),
        (["plan", "--target"], None),
        (["plan", "--target", "--json"], None),
        (["plan", "--format", "yaml"], None),
        (["plan", "--format", "json", "--format", "text"], None),
        (["plan", "--json=1"], None),
        (["status", "--format", "json"], None),
        (["apply"], None),
        (["--repo"], None),
        (["--version"], None),
        ([], None),
    ],
)  # fmt: skip
def test_only_a_plain_plan_or_status_is_answered_before_click(
    argv: list[str], expected: object
) -> None:
    """Anything else (help, --out, --sim, a typo, another command) goes to click untouched."""
    assert memo.parse_argv(argv) == expected


@pytest.mark.slow
def test_a_real_process_replays_the_answer_the_command_recorded(
    offline_repo: Repo, settled: None
) -> None:
    """`python -m reconciler` answers from the memo the command wrote (same key both ways), and
    prints exactly what the command printed."""
    materialized(offline_repo)
    for args in (("plan", "--detailed-exitcode"), ("status", "--json")):
        first, _ = run(offline_repo, *args)
        (offline_repo.path / "state" / INDEX_FILE).unlink()
        again = offline_repo.run_process(*args)
        assert not (offline_repo.path / "state" / INDEX_FILE).exists()  # nothing was loaded
        assert (again.stdout, again.stderr, again.returncode) == (
            first.stdout, first.stderr, first.returncode,
        )  # fmt: skip


def test_specs_through_a_link_to_a_folder_are_stat_ed_as_the_loader_reads_them(
    offline_repo: Repo, settled: None
) -> None:
    """``specs`` a link to a folder: a spec edited in place (same inode, the folder's times
    unchanged) is never answered from the memo."""
    real = offline_repo.path / "real-specs"
    real.mkdir()
    (real / "a.yaml").write_text(spec("a"))
    shutil.rmtree(offline_repo.path / "specs", ignore_errors=True)
    (offline_repo.path / "specs").symlink_to(real)
    (offline_repo.path / "state").mkdir()
    run(offline_repo, "plan")
    assert run(offline_repo, "plan")[1]
    folder = os.stat(real)
    with open(real / "a.yaml", "r+") as fh:  # in place: no new inode, no folder change
        fh.write(spec("a", "A lighthouse at dawn!"))
    assert os.stat(real).st_mtime_ns == folder.st_mtime_ns
    assert not run(offline_repo, "plan")[1]


@pytest.mark.parametrize("odd", [{"answers": {}, "paths": 3}, {"answers": 7}, {"digest": None}])
def test_a_memo_of_an_odd_shape_costs_a_full_run_never_a_traceback(
    offline_repo: Repo, settled: None, odd: dict[str, object]
) -> None:
    materialized(offline_repo)
    first, _ = run(offline_repo, "status")
    path = offline_repo.path / "state" / MEMO_FILE
    data = marshal.loads(path.read_bytes())
    key = next(iter(data["answers"]))
    data["answers"][key] = ("soon", None, [], "x")  # a compare and a digest that both fail
    data.update(odd)
    path.write_bytes(marshal.dumps(data))
    again, replayed = run(offline_repo, "status")
    assert not replayed and again.stdout == first.stdout


FINGERPRINTS = """
import sys
from pathlib import Path
from reconciler import fanout, memo

root = Path(sys.argv[1])
(root / "specs").mkdir()
(root / "specs" / "a.yaml").write_text("name: a\\n")
videos = root / "videos"
videos.mkdir()
paths = []
for i in range(memo.FORK_AT + 50):
    if i % 7:  # every seventh missing: its folder speaks for it
        (videos / f"v{i}.mp4").write_bytes(b"x" * (i % 5))
    paths.append(str(videos / f"v{i}.mp4"))
paths.append(str(root / "gone" / "v.mp4"))  # a folder that is not there
serial = memo._trees(root) + memo._files(paths)
assert fanout.can_fork()  # so on a machine of two cores or more, the child stats them
assert memo.fingerprint(root, paths) == serial
assert memo.fingerprint(root, paths[:10]) == memo._trees(root) + serial[-len(paths) :][:10]
(videos / "v1.mp4").write_bytes(b"changed")
assert memo.fingerprint(root, paths) != serial
print("held")
"""


def test_many_paths_are_stated_in_a_child_to_the_same_fingerprint(tmp_path: Path) -> None:
    """Past FORK_AT paths a forked child stats them while this process walks the trees: the
    list (so the digest) is the one the serial walk makes, missing files and folders included.
    In a fresh process: a test worker may hold threads other tests started (no fork then)."""
    result = subprocess.run(
        [sys.executable, "-c", FINGERPRINTS, str(tmp_path)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "held"
