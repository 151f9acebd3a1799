"""The flat-shape parser against PyYAML's loader: the same documents, lines and types, or no answer.

``flatyaml`` reads spec text without libyaml; a value it read differently from the full path
would change a spec's key, so what was paid for. Every text it accepts here must give exactly
what ``yamlio``'s full path gives (compared by ``repr``, so ``True`` is not ``1`` and a date is
not its text), over the repo's own YAML, hand-picked cases and generated documents full of
YAML's traps.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import yaml

from reconciler import flatyaml, yamlio

ROOT = Path(__file__).resolve().parent.parent


def _fast(text: str) -> str | None:
    docs = flatyaml.documents(text, yamlio._Loader)
    return None if docs is None else repr([(data, line, lines) for data, line, lines in docs])


def _full(text: str) -> str | None:
    docs, problems = yamlio._parse(text, "t.yaml")
    if problems:
        return None
    return repr([(doc.data, doc.line, doc.key_lines) for doc in docs])


def _same(text: str) -> bool:
    """Whether the fast path answered; if it did, it must agree with the full path."""
    fast = _fast(text)
    if fast is not None:
        assert fast == _full(text), text
    return fast is not None


def test_the_repos_own_yaml_reads_the_same() -> None:
    files = [p for p in ROOT.rglob("*.yaml") if ".venv" not in p.parts and ".git" not in p.parts]
    assert len(files) >= 4
    taken = [path for path in files if _same(path.read_text(encoding="utf-8-sig"))]
    assert ROOT / "specs" / "hero.yaml" in taken


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("name: a\naspectRatio: 16:9\n", {"name": "a", "aspectRatio": "16:9"}),
        ("n: 8\nf: 1.5\nx: 0x1F\nb: yes\nz: ~\nd: 2026-01-02\n", None),
        (
            "prompt: >\n  one\n  two\n\n  three\n\n\nname: a\n",
            {"prompt": "one two\nthree\n", "name": "a"},
        ),
        ("prompt: |-\n   one\n   two\n# c\nname: a\n", {"prompt": "one\ntwo", "name": "a"}),
        ("p: 'it''s # not a comment'  # but this is\n", {"p": "it's # not a comment"}),
        ('p: "a: b"\nq: a#b\nr: a #b\n', {"p": "a: b", "q": "a#b", "r": "a"}),
        ("# only\n---\nname: a\n---\n---\nname: b\n", None),
        ("k" * 1024 + ": a\n", None),  # the longest key libyaml takes
        ("p: |\n  # not a comment\n  ---\n  ...\n", {"p": "# not a comment\n---\n...\n"}),
        ("p: '''a'\nq: ''''''\nr: 'a' #c' #d\n", {"p": "'a", "q": "''", "r": "a"}),
        ("p: a :b\nq: a:#\nr: a]\ns: a ＃b\n", {"p": "a :b", "q": "a:#", "r": "a]", "s": "a ＃b"}),
    ],
)
def test_taken_cases(text: str, data: dict[str, object] | None) -> None:
    assert _same(text)
    if data is not None:
        docs = flatyaml.documents(text, yamlio._Loader)
        assert docs is not None and docs[0][0] == data


@pytest.mark.parametrize(
    "text",
    [
        "name: a\nname: b\n",  # written twice: the full path says where
        "true: a\n",  # a key that is not text
        "d: 2026-02-30\n",  # a date that does not exist
        "p: a: b\n",
        "p: &x a\nq: *x\n",
        "p: !!str 8\n",
        "p: [1, 2]\n",
        "p:\n  q: 1\n",
        "p: a\n  continued\n",
        "p: >\n  a\n    more indented\n",
        "p: >\n\n  leading empty line\n",
        "p: |+\n  kept\n\n",
        "p: a \n",
        "p:\ta\n",
        "p: a\r\n",
        "p: a",  # no newline at the end
        'p: "a\\nb"\n',
        "%YAML 1.1\n---\np: a\n",
        "p: a\n...\n",
        "- a\n",
        "p: a\u00a0b\n",
        "<<: a\n",
        "p: <<\n",
        "k" * 1025 + ": a\n",  # libyaml looks no further than 1024 characters for a key's colon
        "a: 1\n" + "k" * 1025 + ": a\n",
        "p: a\x85b\n",  # NEL, LS and PS break lines for libyaml
        "p: a\u2028b\n",
        "p: a\u2029b\n",
        "\ufeffp: a\n",  # a byte order mark
        "p: a\u200bb\n",  # zero-width space, private use, a non-character, a lone surrogate
        "p: a\ue000b\n",
        "p: a\ufffeb\n",
        "p: a\ud800b\n",
    ],
)
def test_left_to_the_full_path(text: str) -> None:
    assert flatyaml.documents(text, yamlio._Loader) is None


KEYS = ["name", "prompt", "model", "durationSeconds", "aspectRatio", "true", "on", "null", "y",
        "n", "_x", "a1", "Key", "No", "OFF", "x-y", "1a", '"q"', "? k", "k k"]  # fmt: skip
VALUES = [
    "plain", "yes", "No", "on", "OFF", "true", "False", "null", "~", "Null", "y", "n", "8", "08",
    "0", "-0", "+5", "-5", "0x1F", "0o7", "017", "0b101", "1_000", "1e3", "1.5e+3", "1.5", ".5",
    "5.", ".inf", "-.Inf", ".nan", "16:9", "1:30", "190:20:30", "2026-01-02",
    "2026-01-02 10:00:00", "2026-01-02T10:00:00Z", "2026-1-2", "2026-02-30", "<<", "=", "a: b",
    "a:", "a :b", "a #c", "a#c", "a  #c", "http://x/y?q=1#f", "#x", "&a", "*a", "!tag x",
    "!!str 8", "%x", "@x", "`x", "[1, 2]", "{a: 1}", "a, b", "-x", "- x", "?x", ": x", "|", ">",
    "|-", ">-", "|+", ">2", "'q'", '"dq"', "'it''s'", "'it's'", '"a\\nb"', '"a # b"',
    "'a # b'", '"x" # c', "'x' #c", "'x'y", '"x"y', '"unclosed', "'unclosed", "café",
    "naïve — dash ☕", "a\u00a0b", "a\u2028b", "a\x85b", "a  b", "a\tb", "say \"hi\"", "x\\y",
    "veo-3.1-fast-generate-preview", "../img.png", "1.0.0", "0.", "+.5", "-", "a-", "''", '""',
]  # fmt: skip
USUAL_KEYS = [*KEYS[:5], "seed", "image", "negativePrompt", "resolution", "x1", "x_2", "Y"]
LINES = ["# comment", "#", "", "  # indented comment", "   ", "---", "--- # c", "...",
         "%YAML 1.1", "\t", "- item", "  more", "  a: b", " x"]  # fmt: skip
WORDS = ["one", "two # not a comment", "- dash", "key: value", "#hash", "'q'", "", "three."]


def _pick(rng: random.Random, trap: float, usual: list[str], odd: list[str]) -> str:
    return rng.choice(odd if rng.random() < trap else usual)


def _block(rng: random.Random, trap: float) -> list[str]:
    header = _pick(rng, trap, [">", "|", ">-", "|-"], ["|+", ">1", "> # c"])
    indent = " " * rng.choice([1, 2, 2, 2, 4])
    body = []
    for _ in range(rng.randint(1, 5)):
        word = rng.choice(WORDS)
        shift = _pick(rng, trap, [""], [" ", indent, "\t"])
        body.append(indent + shift + word if word else _pick(rng, trap, [""], [indent, " "]))
    return [header, *body]


def _document(rng: random.Random) -> str:
    """A document of up to 8 entries; ``trap`` is how often a part is one of YAML's odd cases."""
    trap = rng.choice([0.0, 0.0, 0.02, 0.1, 0.4])
    lines: list[str] = []
    used: set[str] = set()
    for _ in range(rng.randint(1, 8)):
        roll = rng.random()
        if roll < 0.15:
            lines.append(_pick(rng, trap, ["# comment", "#", "", "---"], LINES))
            continue
        key = _pick(rng, trap, USUAL_KEYS, KEYS)
        if key in used and rng.random() > trap:
            continue  # a key written twice only as a trap
        used.add(key)
        sep = _pick(rng, trap, [": ", ":  "], [":", " : ", ":\t"])
        if roll < 0.35:
            header, *body = _block(rng, trap)
            lines.append(f"{key}{sep}{header}")
            lines.extend(body)
        else:
            value = rng.choice(VALUES if rng.random() < 0.6 else WORDS)
            tail = _pick(rng, trap, ["", " # c"], [" ", "\t"])
            lines.append(f"{key}{sep}{value}{tail}")
    end = _pick(rng, trap, ["\n"], ["", "\n\n", "\r\n"])
    return end.join(lines) + end


def test_generated_documents_read_the_same() -> None:
    rng = random.Random(20261202)
    taken = 0
    for _ in range(20_000):
        taken += _same(_document(rng))
    # Enough of them took the fast path for the comparison to mean something, and the traps
    # sent the rest to the full path.
    assert 3_000 < taken < 16_000, taken


# YAML's significant characters (and a plain letter, digits, a space, a non-ASCII letter): every
# value made of up to three of them, and every block of up to three lines from BLOCK_LINES.
SHORT = "a #:'\"-?,[]{}&*!|>%@`.~\\=<01+_e\u00e9"
BLOCK_LINES = ["", "  a", "  #", "   a", " a", "#", "---", "...", "a: b", "  a #b", "  'x'",
               "  - a", "  a:", "b", "# c"]  # fmt: skip


def test_every_short_value_reads_the_same() -> None:
    """Each value of up to three significant characters is read as libyaml reads it, or left."""
    values = [
        "".join(chars) for size in (1, 2, 3) for chars in itertools.product(SHORT, repeat=size)
    ]
    taken = sum(_same(f"p: {value}\n") for value in values)
    assert 10_000 < taken < len(values), taken


def test_every_short_block_reads_the_same() -> None:
    """Each block scalar of up to three lines, before a key or the end, reads as libyaml's."""
    taken = 0
    for header in (">", "|", ">-", "|-"):
        for size in (0, 1, 2, 3):
            for body in itertools.product(BLOCK_LINES, repeat=size):
                for tail in ((), ("q: 1",)):
                    taken += _same("\n".join((f"p: {header}", *body, *tail)) + "\n")
    assert taken > 4_000, taken


def test_the_scalar_cache_keeps_each_meaning_apart() -> None:
    """A value read before (under another loader, or as a value rather than a key) is read again
    by the rules that apply now: PyYAML's own loader reads ``16:9`` as 969, ours as text."""
    assert flatyaml.documents("p: 16:9\n", yaml.SafeLoader) == [({"p": 969}, 1, {"p": 1})]
    assert _same("p: 16:9\n")
    assert _fast("p: 16:9\n") == repr([({"p": "16:9"}, 1, {"p": 1})])
    assert flatyaml.documents("p: 16:9\n", yaml.SafeLoader) == [({"p": 969}, 1, {"p": 1})]
    assert _same("p: on\nq: abc\n")
    assert flatyaml.documents("on: 1\n", yamlio._Loader) is None  # a key that is not text
    assert _same("abc: on\n")


def test_the_scalar_cache_keeps_short_values_only() -> None:
    """A daemon reads thousands of one-line prompts: none is kept, the repeated short values are."""
    prompt = "'" + "a slow pan across a harbour " * 40 + "'"
    assert flatyaml.documents(f"model: veo-x\nprompt: {prompt}\n", yamlio._Loader) is not None
    seen = flatyaml._SEEN[yamlio._Loader]
    assert "veo-x" in seen and prompt not in seen
