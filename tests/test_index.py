"""The spec index (state/spec-index.marshal): a warm load reads no unchanged spec, and never serves
a stale one. Real files in tmp_path; "parsed" is the number of spec files the load read and
parsed (LoadResult.parsed), the observable difference between a cold and a warm load.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import yaml
from conftest import SPEC, Repo, png_bytes

from reconciler import lockfile
from reconciler.config import load_config
from reconciler.index import INDEX_FILE, SLACK_NS, SpecIndex
from reconciler.loader import LoadResult, load_specs
from reconciler.memo import MEMO_FILE
from reconciler.reload import swap_edited

MODEL = "veo-3.1-generate-preview"


def make(tmp_path: Path, files: dict[str, str | bytes], *, state: bool = True) -> Path:
    root = tmp_path / "repo"
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content).lstrip())
    if state:
        (root / "state").mkdir(parents=True, exist_ok=True)
    return root


def load(root: Path) -> LoadResult:
    return load_specs(root, load_config(root))


def spec(name: str, prompt: str = "A lighthouse at dusk.") -> str:
    return SPEC.format(name=name, prompt=prompt).lstrip()


def age(path: Path, seconds: float = 60) -> None:
    """Date a file back, so it is not racy against an index written now."""
    when = path.stat().st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(when, when))


def three(tmp_path: Path) -> Path:
    root = make(tmp_path, {f"specs/{n}.yaml": spec(n) for n in ("a", "b", "c")})
    for name in ("a", "b", "c"):
        age(root / f"specs/{name}.yaml")
    return root


def test_a_warm_load_parses_nothing_and_gives_the_same_specs(tmp_path: Path) -> None:
    root = three(tmp_path)
    cold = load(root)
    assert cold.parsed == 3 and (root / "state" / INDEX_FILE).is_file()
    warm = load(root)
    assert warm.parsed == 0
    assert warm.specs == cold.specs and warm.files == cold.files and warm.problems == []


def test_specs_with_images_and_chains_come_back_from_the_index_equal(tmp_path: Path) -> None:
    root = make(tmp_path, {
        "assets/first.png": png_bytes(1), "assets/last.png": png_bytes(2),
        "assets/ref.png": png_bytes(3),
        "specs/frames.yaml": f"""
            name: frames
            model: {MODEL}
            prompt: From one frame to another.
            image: ../assets/first.png
            lastFrame: ../assets/last.png
            seed: 7
            negativePrompt: blur
            """,
        "specs/refs.yaml": f"""
            name: refs
            model: {MODEL}
            prompt: The same cat.
            referenceImages: [../assets/ref.png]
            """,
        "specs/chain.yaml": f"""
            name: base
            model: {MODEL}
            prompt: A road.
            ---
            name: next
            model: {MODEL}
            prompt: Further down the road.
            video: {{from: base}}
            """,
    })  # fmt: skip
    for path in root.rglob("*"):
        if path.is_file():
            age(path)
    cold = load(root)
    assert cold.problems == [] and len(cold.specs) == 4
    warm = load(root)
    assert warm.parsed == 0
    assert sorted(warm.specs, key=lambda s: s.name) == sorted(cold.specs, key=lambda s: s.name)


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    root = three(tmp_path)
    before = {s.name: s.key for s in load(root).specs}
    (root / "specs/b.yaml").write_text(spec("b", "A lighthouse at noon, in fog."))
    result = load(root)
    assert result.parsed == 1
    after = {s.name: s.key for s in result.specs}
    assert after["b"] != before["b"] and after["a"] == before["a"]


def test_a_same_size_rewrite_with_the_old_mtime_is_read_again(tmp_path: Path) -> None:
    """Size and mtime alike: the ctime (and, for a rename over it, the inode) still tells."""
    root = three(tmp_path)
    path = root / "specs/a.yaml"
    st = path.stat()
    load(root)
    path.write_text(spec("a", "A lighthouse at dawn."))  # same length as "... at dusk."
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    result = load(root)
    assert result.parsed == 1
    assert [s.prompt for s in result.specs if s.name == "a"] == ["A lighthouse at dawn."]


def test_a_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    root = three(tmp_path)
    path = root / "specs/c.yaml"
    st = path.stat()
    load(root)
    other = root / "c.tmp"
    other.write_text(spec("c", "A lighthouse at dawn."))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    result = load(root)
    assert result.parsed == 1
    assert [s.prompt for s in result.specs if s.name == "c"] == ["A lighthouse at dawn."]


def test_an_entry_not_older_than_the_index_is_read_again(tmp_path: Path) -> None:
    """git's racy case: a file whose mtime is not before the index's own write could change
    within the same timestamp tick without its stat showing it, so it is never trusted."""
    root = three(tmp_path)
    path = root / "specs/a.yaml"
    future = path.stat().st_mtime_ns + int(3600e9)
    os.utime(path, ns=(future, future))
    assert load(root).parsed == 3
    assert load(root).parsed == 1  # a.yaml, every time, while it looks newer than the index
    assert load(root).parsed == 1


def test_a_changed_image_changes_the_key_and_an_unchanged_one_is_not_read(tmp_path: Path) -> None:
    root = make(tmp_path, {
        "assets/first.png": png_bytes(1),
        "specs/hero.yaml": spec("hero") + "image: ../assets/first.png\n",
    })  # fmt: skip
    age(root / "specs/hero.yaml")
    age(root / "assets/first.png")
    first = load(root).specs[0]
    warm = load(root)
    assert warm.parsed == 0 and warm.specs[0].key == first.key
    (root / "assets/first.png").write_bytes(png_bytes(2))
    result = load(root)
    assert result.parsed == 1
    assert result.specs[0].key != first.key
    assert result.specs[0].image is not None and first.image is not None
    assert result.specs[0].image.sha256 != first.image.sha256


def test_a_missing_image_that_appears_is_seen(tmp_path: Path) -> None:
    root = make(tmp_path, {"specs/hero.yaml": spec("hero") + "image: ../assets/first.png\n"})
    age(root / "specs/hero.yaml")
    assert "not found" in str(load(root).problems)
    assert "not found" in str(load(root).problems)  # from the index, with its line
    (root / "assets").mkdir()
    (root / "assets/first.png").write_bytes(png_bytes(1))
    result = load(root)
    assert result.problems == [] and result.specs[0].image is not None


def test_a_changed_config_invalidates_every_entry(tmp_path: Path) -> None:
    root = three(tmp_path)
    before = {s.name: s.key for s in load(root).specs}
    (root / "reconcile.yaml").write_text("defaults:\n  resolution: 1080p\n")
    result = load(root)
    assert result.parsed == 3
    assert all(s.key != before[s.name] for s in result.specs)


def test_a_corrupt_or_truncated_index_is_rebuilt_silently(tmp_path: Path) -> None:
    root = three(tmp_path)
    expected = load(root).specs
    index = root / "state" / INDEX_FILE
    blob = index.read_bytes()
    for damaged in (b"garbage", blob[: len(blob) // 2], b"", os.urandom(300)):
        index.write_bytes(damaged)
        result = load(root)
        assert result.parsed == 3 and result.specs == expected and result.problems == []
        assert load(root).parsed == 0  # rewritten whole


def test_problems_come_back_from_the_index_with_file_and_line(tmp_path: Path) -> None:
    root = make(tmp_path, {"specs/bad.yaml": spec("bad") + "resolutin: 720p\n"})
    age(root / "specs/bad.yaml")
    cold = load(root)
    warm = load(root)
    assert warm.parsed == 0 and warm.problems == cold.problems
    (problem,) = warm.problems
    assert str(problem).startswith("specs/bad.yaml:4") and "did you mean 'resolution'" in str(
        problem
    )


def test_a_deleted_spec_is_gone_and_a_new_one_is_seen(tmp_path: Path) -> None:
    root = three(tmp_path)
    load(root)
    (root / "specs/b.yaml").unlink()
    (root / "specs/sub").mkdir()
    (root / "specs/sub/d.yaml").write_text(spec("d"))
    result = load(root)
    assert sorted(s.name for s in result.specs) == ["a", "c", "d"] and result.parsed == 1


def test_an_event_reads_only_the_files_it_names(tmp_path: Path) -> None:
    """watch keeps the index in memory and names the changed files: only those are read."""
    root = three(tmp_path)
    config = load_config(root)
    first = load_specs(root, config)
    (root / "specs/a.yaml").write_text(spec("a", "A lighthouse in a storm."))
    (root / "specs/c.yaml").write_text(spec("c", "A lighthouse in the snow."))
    (root / "specs/new.yaml").write_text(spec("new"))
    named = load_specs(root, config, index=first.index, changed={"specs/a.yaml", "specs/new.yaml"})
    assert named.parsed == 2
    prompts = {s.name: s.prompt for s in named.specs}
    assert prompts["a"] == "A lighthouse in a storm." and "new" in prompts
    assert prompts["c"] == "A lighthouse at dusk."  # not named: as last loaded, until a full load
    (root / "specs/new.yaml").unlink()
    gone = load_specs(root, config, index=named.index, changed={"specs/new.yaml"})
    assert "new" not in {s.name for s in gone.specs}
    full = load_specs(root, config, index=gone.index)
    assert {s.name: s.prompt for s in full.specs}["c"] == "A lighthouse in the snow."


def test_no_state_folder_means_no_index_and_nothing_created(tmp_path: Path) -> None:
    root = make(tmp_path, {"specs/a.yaml": spec("a")}, state=False)
    assert load(root).parsed == 1
    assert load(root).parsed == 1
    assert not (root / "state").exists()


def test_plan_validate_and_status_keep_the_index_but_change_no_state(offline_repo: Repo) -> None:
    """The index is a cache: read-only commands may write it (and the answer memo, another
    cache), and nothing else, in state/."""
    offline_repo.write("specs/a.yaml", spec("a"))
    (offline_repo.path / "state").mkdir()
    for command in ("validate", "plan", "status", "plan"):
        result = offline_repo.run(command)
        assert result.returncode == 0, result.stdout + result.stderr
    names = {p.name for p in (offline_repo.path / "state").iterdir()}
    assert names - {MEMO_FILE} == {INDEX_FILE}  # the answer memo is a cache too (test_memo.py)
    assert not (offline_repo.path / lockfile.LOCK_FILE).exists()


# -- the lock: fast paths, and every older shape still read ---------------------------------------

SHA = "ab" * 32


def entry(name: str, **kw: object) -> lockfile.LockEntry:
    fields: dict[str, object] = {
        "spec_key": "k" * 64, "path": f"videos/{name}.{SHA[:16]}.mp4", "sha256": SHA,
        "bytes": 1234, "model": MODEL, "operation": "models/x/operations/1",
        "generated": "2026-01-01T00:00:00Z", "uri": None, "expires": None, **kw,
    }  # fmt: skip
    return lockfile.LockEntry(name=name, **fields)  # type: ignore[arg-type]


def test_a_rendered_lock_reads_back_exactly_with_awkward_strings() -> None:
    entries = [
        entry("a"), entry("b", uri='https://x/"quoted"\\path', expires="2026-01-03T00:00:00Z"),
        entry("c", model="modèle-ünïcode", operation=None, generated=None), entry("d", bytes=0),
    ]  # fmt: skip
    text = lockfile.render(entries)
    assert lockfile.parse(text) == {e.name: e for e in entries}
    assert lockfile.parse(lockfile.render([])) == {}


def test_an_older_or_hand_edited_lock_is_still_read() -> None:
    """Before uri/expires, fields in another order, other quoting, flow style: YAML reads it."""
    old = textwrap.dedent(f"""
        # reconcile.lock
        version: 1
        specs:
          b:
            path: 'videos/b.{SHA[:16]}.mp4'
            spec_key: {"k" * 64}
            sha256: "{SHA}"
            bytes: 1234
            model: {MODEL}
            operation: models/x/operations/1
            generated: "2026-01-01T00:00:00Z"
          a: {{spec_key: "{"k" * 64}", path: "videos/a.{SHA[:16]}.mp4", sha256: "{SHA}",
              bytes: 1234, model: "{MODEL}", operation: "models/x/operations/1",
              generated: "2026-01-01T00:00:00Z"}}
        """)
    assert lockfile.parse(old) == {"a": entry("a"), "b": entry("b")}


def test_a_lock_read_is_kept_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / lockfile.LOCK_FILE
    lockfile.write(path, [entry("a")])
    old = path.stat().st_mtime_ns - int(60e9)
    os.utime(path, ns=(old, old))
    assert set(lockfile.read(path)) == {"a"}
    lockfile.write(path, [entry("a"), entry("b")])  # a new file (atomic write): a new stat
    assert set(lockfile.read(path)) == {"a", "b"}


def test_an_edit_in_place_is_swapped_into_the_last_load(tmp_path: Path) -> None:
    """watch after an edit of valid files: their specs swapped in, nothing else looked at; a new,
    deleted or broken file, a renamed spec or a chain anywhere means a full load (None)."""
    root = three(tmp_path)
    config = load_config(root)
    last = load_specs(root, config)
    (root / "specs/b.yaml").write_text(spec("b", "A lighthouse in a storm."))
    swapped = swap_edited(root, config, last, {"specs/b.yaml"})
    assert swapped is not None and swapped.parsed == 1 and set(swapped.swapped or {}) == {"b"}
    full = load_specs(root, config)
    assert swapped.specs == full.specs and swapped.files == full.files
    (root / "specs/b.yaml").write_text(spec("renamed"))
    assert swap_edited(root, config, swapped, {"specs/b.yaml"}) is None
    (root / "specs/b.yaml").write_text("name: [broken\n")
    assert swap_edited(root, config, swapped, {"specs/b.yaml"}) is None
    (root / "specs/new.yaml").write_text(spec("new"))
    assert swap_edited(root, config, swapped, {"specs/new.yaml"}) is None
    (root / "specs/b.yaml").unlink()
    assert swap_edited(root, config, swapped, {"specs/b.yaml"}) is None
    (root / "specs/d.yaml").write_text(spec("d") + "video: {from: a}\n")
    chained = load_specs(root, config)
    (root / "specs/a.yaml").write_text(spec("a", "A lighthouse in a storm."))
    assert chained.chained and swap_edited(root, config, chained, {"specs/a.yaml"}) is None


def test_an_edit_in_the_tick_of_the_read_is_never_served_from_memory(tmp_path: Path) -> None:
    """As `watch` keeps its index in memory (no index file to compare with): on a file system of
    coarse timestamps (FAT, SMB, NFS, HFS+), an edit right after the read can leave size and
    mtime as read. Here the edit is made to keep them by hand; the entry, read within the
    slack of its mtime, is read again, not trusted, until a read sees the file older."""
    root = make(tmp_path, {"specs/a.yaml": spec("a", "A red car.")}, state=False)
    path = root / "specs/a.yaml"
    first = load(root)
    assert [s.prompt for s in first.specs] == ["A red car."]
    before = path.stat()
    path.write_text(spec("a", "A red cat."))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the coarse tick: same mtime
    assert path.stat().st_size == before.st_size
    again = load_specs(root, load_config(root), index=first.index)
    assert again.parsed == 1
    assert [s.prompt for s in again.specs] == ["A red cat."]
    age(path)  # once the file is older than its read by more than the slack, it is trusted
    settled = load_specs(root, load_config(root), index=again.index)
    reread = load_specs(root, load_config(root), index=settled.index)
    assert reread.parsed == 0 and [s.prompt for s in reread.specs] == ["A red cat."]


def test_an_entry_read_in_its_files_tick_is_racy_with_no_index_file(tmp_path: Path) -> None:
    """The rule itself, on a fresh in-memory index (no file, so no index mtime to compare
    with): the same stat as recorded is not trusted while the mtime is within the slack of the
    read, and is once the mtime is older; a coarse file system's same-tick edit is exactly that."""
    fresh = SpecIndex(None, "stamp")
    now = time.time_ns()
    recent: tuple[int, int, int, int] = (120, now, now, 7)
    fresh.store("specs/a.yaml", recent, [], [])
    assert fresh.lookup("specs/a.yaml", recent) is None
    old = (120, now - 10 * SLACK_NS, now, 8)
    fresh.store("specs/b.yaml", old, [], [])
    assert fresh.lookup("specs/b.yaml", old) is not None


def test_a_hand_edited_number_with_a_leading_zero_reads_as_yaml_reads_it() -> None:
    """The fast paths take only the integers `render` writes; `bytes: 01234` (YAML 1.1: octal)
    goes to YAML, so the lock means one thing whichever reader meets it."""
    text = lockfile.render([entry("a", bytes=1234)])
    odd = text.replace("bytes: 1234", "bytes: 01234")
    assert odd != text
    assert lockfile.parse(odd)["a"].bytes == yaml.safe_load(odd)["specs"]["a"]["bytes"] == 0o1234
