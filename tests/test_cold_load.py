"""A cold load's shortcuts give exactly what the general path gives.

The fast constructor (``yamlio._construct``) must build the same data as PyYAML's safe constructor
for every document it accepts, and hand every other one (anchors, keys written twice, keys that
are not text, values a tag cannot make) to the general path, whose messages say where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, jpeg_bytes, png_bytes

from reconciler import failpoints, fanout, walk, yamlio
from reconciler.index import SLACK_NS

DOCUMENTS = [
    "name: a\nmodel: m\nprompt: >\n  folded\n  text\n",
    "a: 1\nb: 0x1f\nc: 0o17\nd: 1_000\ne: -3\nf: +4\ng: 0b101\n",
    "a: 1.5\nb: .inf\nc: -.inf\nd: 1e3\ne: 6.02e+23\nf: 1_0.5\n",
    "a: true\nb: False\nc: yes\nd: off\ne: ~\nf: null\ng:\n",
    "aspectRatio: 16:9\nother: 4:3\ntime: 12:30:45\n",
    "day: 2024-02-29\nwhen: 2024-02-29T10:11:12Z\nbad: 2023-02-30\n",
    "a: !!str 12\nb: !!int '7'\nc: !!float '2'\nd: !!binary aGVsbG8=\ne: !!null ''\n",
    "a: [1, two, {b: c}]\nrefs:\n  - x.png\n  - {image: y.png, referenceType: style}\n",
    "nested:\n  deeper:\n    deepest: [[], {}]\n",
    '\'quoted key\': 1\n"double": 2\nunicode: "caf\\u00e9 \\U0001F600"\n',
    "just a scalar\n",
    "- a list\n- at the top\n",
    "",
    "# only a comment\n",
    "a: 1\n---\nb: 2\n---\n",
    "a: &x {b: 1}\nc: *x\n",
    "a: 1\na: 2\n",
    "list:\n  - {k: 1, k: 2}\n",
    "1: one\n2: two\n",
    "? [a, b]\n: complex key\n",
    "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\n",
    "a: !!set {x, y}\nb: !!omap [{x: 1}, {y: 2}]\n",
    "a: !custom value\n",
    "a: !!int eight\n",
]


def _general(text: str) -> tuple[list[object], str | None]:
    """The documents PyYAML's own constructor makes of ``text`` (None skipped), or its error."""
    try:
        return [d for d in yaml.load_all(text, Loader=yamlio._Loader) if d is not None], None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        return [], type(exc).__name__


@pytest.mark.parametrize("text", DOCUMENTS)
def test_fast_constructor_matches_pyyaml(text: str, tmp_path: Path) -> None:
    """Every document loads to the data PyYAML's safe constructor makes, types included."""
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    docs, problems = yamlio.load_documents(path, "spec.yaml")
    expected, error = _general(text)
    if error is None and not problems:
        assert [d.data for d in docs] == expected
        assert [repr(d.data) for d in docs] == [repr(e) for e in expected]
    else:  # an error, or a key written twice: said by the general path, with its line
        assert problems and not docs
        assert all(p.line is not None for p in problems)


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\na: 2\n",
        "a: &x {b: 1}\nc: *x\n",
        "1: one\n",
        "a: !custom value\n",
        "a: !!int eight\n",
        "base: &b {x: 1}\nmerged: {<<: *b}\n",
    ],
)
def test_fast_constructor_refuses_what_it_cannot_prove(text: str) -> None:
    """Anchors are found before construction; the rest raise, and take the general path."""
    if "&" in text:
        return  # load_documents never hands a document with an anchor to _construct
    loader = yamlio._Loader(text)
    try:
        node = loader.get_single_node()
        with pytest.raises(Exception):  # noqa: B017 - _NotPlain, or the tag's own error
            yamlio._construct(node, loader)
    finally:
        loader.dispose()


def test_duplicate_key_keeps_its_lines(tmp_path: Path) -> None:
    """A key written twice is said on its second line, naming the first, as before."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nprompt: one\nmodel: m\nprompt: two\n", encoding="utf-8")
    docs, problems = yamlio.load_documents(path, "spec.yaml")
    assert not docs
    assert [(p.line, p.field) for p in problems] == [(4, "prompt")]
    assert "first written on line 2" in problems[0].message


def test_fast_document_still_has_key_lines(tmp_path: Path) -> None:
    """A document the fast path built still gives each key's line when a message asks."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nvideo:\n  from: b\nprompt: p\n", encoding="utf-8")
    docs, _ = yamlio.load_documents(str(path), "spec.yaml")
    assert docs[0].line_of("prompt") == 4
    assert docs[0].line_at(["video", "from"]) == 3


# -- a cold load on every core: the same result as on one --------------------------------------

MODEL = "veo-3.1-fast-generate-preview"
# Prints what a load found, as plain data, for the workers given; run in a process of its own,
# because forking is only done (and only safe) in a process with no other thread.
PROBE = """
import json, sys
from pathlib import Path
from reconciler.config import load_config
from reconciler.loader import load_specs
repo = Path(sys.argv[1])
for workers in map(int, sys.argv[2:]):
    r = load_specs(repo, load_config(repo), workers=workers)
    entries = {rel: [repr(e.specs), repr(e.problems), sorted(e.images.items()), sorted(e.targets)]
               for rel, e in r.index.entries.items()}
    print(json.dumps({
        "processes": r.processes, "parsed": r.parsed, "specs": [repr(s) for s in r.specs],
        "problems": [repr(p) for p in r.problems], "files": r.files,
        "bad": sorted(r.bad_files), "chained": r.chained, "entries": entries,
        "order": list(r.index.entries),
        "hashes": {t: h[:4] for t, h in sorted(r.index.hashes.items())},
    }))
"""


def _corpus(path: Path) -> None:
    """Specs of every kind, good and bad, spread so that each part of a split holds some."""

    def spec(name: str, extra: str = "") -> str:
        return f"name: {name}\nmodel: {MODEL}\nprompt: Clip {name} at dusk.\n{extra}"

    files = {
        "a/base.yaml": spec("base"),
        "a/child.yaml": spec("child", "video: {from: base}\n"),
        "a/image.yaml": spec("still", "image: ../../img/one.png\n"),
        "a/frames.yaml": spec("frames", "image: ../../img/one.png\nlastFrame: ../../img/two.jpg\n"),
        "a/refs.yaml": spec(
            "refs",
            "referenceImages:\n  - ../../img/one.png\n  - {image: ../../img/three.png, "
            "referenceType: asset}\n",
        ),
        "a/multi.yaml": spec("m1") + "---\n" + spec("m2", "resolution: 1080p\n"),
        "b/bad-yaml.yaml": "name: x\nprompt: [unclosed\n",
        "b/unknown.yaml": spec("unk", "promt: typo\n"),
        "b/dup-key.yaml": spec("dupkey", "prompt: again\n"),
        "b/dup-name.yaml": spec("base"),
        "b/missing-image.yaml": spec("noimg", "image: ../../img/none.png\n"),
        "b/anchors.yaml": spec("anchored", "negativePrompt: &n blur\nseed: 7\n"),
        "b/empty.yaml": "# nothing\n",
        "b/grandchild.yaml": spec("grandchild", "video: {from: child}\n"),
        "b/orphan.yaml": spec("orphan", "video: {from: nobody}\n"),
        "b/not-utf8.yaml": None,
    }
    for rel, text in files.items():
        target = path / "specs" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            target.write_bytes(b"name: \xff\xfe\n")
        else:
            target.write_text(text)
    (path / "img").mkdir()
    (path / "img" / "one.png").write_bytes(png_bytes(1))
    (path / "img" / "three.png").write_bytes(png_bytes(3))
    (path / "img" / "two.jpg").write_bytes(jpeg_bytes())
    (path / "reconcile.yaml").write_text("defaults:\n  enhancePrompt: false\n")


def _probe(repo: Path, *workers: int, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE")}
    environ.update(env or {}, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(repo), *map(str, workers)],
        capture_output=True, text=True, env=environ, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines()]


def _same(one: dict[str, Any], other: dict[str, Any]) -> None:
    for key in ("specs", "problems", "files", "bad", "chained", "entries", "order", "hashes"):
        assert one[key] == other[key], key


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3, 7])
def test_forked_load_is_the_serial_load(tmp_path: Path, workers: int) -> None:
    """Specs, problems (their order too), the index's entries and image hashes: all identical."""
    _corpus(tmp_path)
    serial, forked = _probe(tmp_path, 1, workers)
    assert serial["processes"] == 1 and forked["processes"] == workers
    assert serial["parsed"] == forked["parsed"] == 16
    assert len(serial["specs"]) == 9 and len(serial["problems"]) == 8  # the corpus is as meant
    _same(serial, forked)


@pytest.mark.slow
def test_forked_load_fills_the_index_for_a_warm_load(tmp_path: Path) -> None:
    """The entries children sent back are saved, and a warm load takes them as they are."""
    _corpus(tmp_path)
    (tmp_path / "state").mkdir()
    time.sleep(SLACK_NS / 1e9 + 0.1)  # files older than the index's racy window
    forked, warm = _probe(tmp_path, 2, 1)
    assert forked["processes"] == 2 and warm["parsed"] == 0
    _same(forked, warm)


@pytest.mark.slow
def test_a_child_that_dies_costs_only_its_part(tmp_path: Path) -> None:
    """A child SIGKILLed before it parses anything: its part is parsed here, nothing is lost."""
    _corpus(tmp_path)
    (serial,) = _probe(tmp_path, 1)
    (forked,) = _probe(tmp_path, 3, env={failpoints.ENV: "parse_child:1"})
    assert forked["processes"] == 1
    _same(serial, forked)


def test_split_keeps_order_and_covers_everything() -> None:
    """Parts are contiguous, in order, of sizes differing by at most one."""
    items = list(range(10))
    for parts in (1, 2, 3, 4, 10):
        pieces = fanout.split(items, parts)
        assert [i for piece in pieces for i in piece] == items
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    items = list(range(1000))
    for parts in (2, 3, 7):
        first, *rest = fanout.split(items, parts, first=0.8)
        assert [*first, *(i for piece in rest for i in piece)] == items
        assert max(map(len, rest)) - min(map(len, rest)) <= 1
        assert abs(len(first) - 0.8 * len(rest[0])) <= 2


def test_no_fork_outside_the_main_thread() -> None:
    """watch loads specs in a worker thread: forking there is refused, the load runs serially."""
    answers: list[bool] = []
    thread = threading.Thread(target=lambda: answers.append(fanout.can_fork()))
    thread.start()
    thread.join()
    assert answers == [False]


# -- the walk: no stat per file, the same files in the same order ---------------------------------


def test_the_walk_finds_spec_files_in_component_order(tmp_path: Path) -> None:
    """Regular files and links to them, by the listing's own file types; links to folders, dot
    files, other suffixes and dangling links left out; the order is that of the paths' components
    (a folder's files before a sibling sorting after it), as the index and every message keep."""
    specs = tmp_path / "specs"
    for rel in ("b.yaml", "a.yaml", "a/z.yml", "a/b/c.yaml", "a-b.yaml", "a.b/x.yaml", "A.yaml",
                "x.txt", ".hidden.yaml", ".dot/y.yaml", "dir.yaml/in.yaml", "z/zz/zzz.yaml"):  # fmt: skip
        (specs / rel).parent.mkdir(parents=True, exist_ok=True)
        (specs / rel).write_text("name: x\n")
    (specs / "link.yaml").symlink_to(specs / "b.yaml")
    (specs / "dangling.yaml").symlink_to(specs / "gone.yaml")
    (specs / "folder-link").symlink_to(specs / "a")
    (specs / "folder.yaml").mkdir()  # a folder named like a spec: walked into, not read
    found = walk.walk_specs(tmp_path, [])
    expected = ["A.yaml", "a/b/c.yaml", "a/z.yml", "a-b.yaml", "a.b/x.yaml", "a.yaml", "b.yaml",
                "dir.yaml/in.yaml", "link.yaml", "z/zz/zzz.yaml"]  # fmt: skip
    assert found == [f"specs/{rel}" for rel in expected]
    assert found == sorted(found, key=lambda rel: rel.split("/"))


def test_a_cold_load_stats_each_file_before_reading_it(tmp_path: Path) -> None:
    """With an empty index the walk stats nothing; each file's stat is taken where it is parsed,
    before it is read, and a file gone by then is a problem now and is parsed again next time."""
    from reconciler.config import load_config
    from reconciler.files import stat_of
    from reconciler.index import NO_STAT, SpecIndex
    from reconciler.loader import _parse

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(f"name: a\nmodel: {MODEL}\nprompt: A clip.\n")
    index = SpecIndex(None, "stamp")
    listed = walk.spec_files(tmp_path, index, None, [])
    assert listed == [("specs/a.yaml", None)]
    listed.append(("specs/gone.yaml", None))  # listed, then deleted before its parse
    _parse(listed, tmp_path, load_config(tmp_path), frozenset(), index, 1, None)
    assert index.entries["specs/a.yaml"].stat == stat_of(tmp_path / "specs" / "a.yaml")
    gone = index.entries["specs/gone.yaml"]
    assert gone.stat == NO_STAT and "cannot be read" in gone.problems[0].message
    (tmp_path / "specs" / "gone.yaml").write_text("name: back\n")  # back: no stat matches it
    assert index.lookup("specs/gone.yaml", stat_of(tmp_path / "specs" / "gone.yaml")) is None


def test_meanwhile_runs_once_here_while_children_work(tmp_path: Path) -> None:
    """``fanout.run``'s ``meanwhile`` runs in this process, once, after the children are forked
    and before its own part; a load that does not fork runs it before its parse."""
    code = (
        "import os, sys\nfrom reconciler import fanout\nseen = []\n"
        "def work(part, forked):\n    seen.append(('work', os.getpid()))\n"
        "    return list(part) if forked else None\n"
        # A child already forked (running, or exited and not yet reaped) is there to wait for;
        # WNOWAIT leaves it to fanout to reap. None forked: ChildProcessError.
        "def forked():\n    try:\n"
        "        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)\n"
        "    except ChildProcessError:\n        return False\n    return True\n"
        "def meanwhile():\n    seen.append(('meanwhile', os.getpid(), forked()))\n"
        "results = fanout.run(range(6), work, parts=3, meanwhile=meanwhile)\n"
        "me = os.getpid()\n"
        "print(results == [[2, 3], [4, 5]], seen == [('meanwhile', me, True), ('work', me)])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["True", "True"], done.stderr
    from reconciler.config import load_config
    from reconciler.loader import load_specs

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(f"name: a\nmodel: {MODEL}\nprompt: A clip.\n")
    calls: list[int] = []
    result = load_specs(tmp_path, load_config(tmp_path), meanwhile=lambda: calls.append(1))
    assert calls == [1] and result.parsed == 1 and [s.name for s in result.specs] == ["a"]
