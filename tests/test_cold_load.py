"""A cold load's shortcuts give exactly what the general path gives.

The fast constructor (``yamlio._construct``) must build the same data as PyYAML's safe constructor
for every document it accepts, and hand every other one (anchors, keys written twice, keys that
are not text, values a tag cannot make) to the general path, whose messages say where.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler import yamlio

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
