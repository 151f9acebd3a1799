"""The plain checks that spare a cold load pydantic give exactly pydantic's answers.

``spec.plain_doc`` and ``config._plain`` accept only what they can prove valid and must then give
the very values pydantic's models give; anything else is theirs to refuse (None), never to
decide, so pydantic keeps every error message. Held to that over every spec document written in
the tests and the example specs, and over generated variants of each field: plain values,
coercible ones ("8", 8.0, "true"), wrong types, out of range, blank, padded.
"""

from __future__ import annotations

import ast
import itertools
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler import config as config_module
from reconciler.config import Config, load_config
from reconciler.spec import KNOWN_KEYS, SPEC_FIELDS, PlainDoc, plain_doc
from reconciler.specdoc import ReferenceDoc, SpecDoc
from reconciler.yamlio import load_documents

ROOT = Path(__file__).resolve().parent.parent
MODEL = "veo-3.1-fast-generate-preview"
BASE = {"name": "a", "model": MODEL, "prompt": "A red kite over a windy beach."}

# Values to try per field: valid, coercible by pydantic, wrong in type, range or shape.
VARIANTS: dict[str, list[Any]] = {
    "name": [
        "a",
        "a-b_c9",
        "A",
        "a b",
        "-a",
        "a" * 64,
        "a" * 65,
        "abc\n",
        "",
        3,
        None,
        True,
        "a\ud800",
    ],
    "model": [MODEL, " x ", "", "  ", "veo-3.1-generate-001", 7, None, ["x"]],
    "prompt": [
        "p",
        "  padded  \n",
        "",
        "   ",
        "x" * 4096,
        "x" * 4097,
        " " + "x" * 4096,
        5,
        None,
        "a\ud800b",
    ],
    "aspectRatio": ["16:9", "9:16", "4:3", 969, "", None, " 16:9"],
    "resolution": ["720p", "1080p", "4k", "4K", "480p", 720, None],
    "durationSeconds": [4, 6, 8, 5, "8", " 8", 8.0, 8.5, True, False, None, "", -8, 0],
    "personGeneration": ["allow_all", "allow_adult", "dont_allow", None, 1, ""],
    "enhancePrompt": [True, False, "true", 1, 0, None, "yes", 1.0],
    "negativePrompt": ["blur", "", "  ", None, 3, ["a"], " x "],
    "image": ["a.png", "", " ", None, 1, "../x.png"],
    "lastFrame": ["b.png", "", None, 2],
    "seed": [0, 1, 2**32 - 1, 2**32, -1, "5", 5.0, True, None],
    "take": [
        "deadbeef\ud800",
        "3f9a2c1b",
        "3F9A2C1B",
        "3f9a2c1",
        "3f9a2c1b\n",
        "a" * 64,
        "a" * 65,
        "",
        12345678,
        None,
        "g" * 8,
    ],
    "referenceImages": [["r.png"], [{"image": "r.png"}], None, []],
    "video": [{"from": "base"}, {"uri": "https://x/v"}, None, "base"],
    "nope": [1, None],
}


def pydantic_answer(data: dict[Any, Any]) -> SpecDoc | None:
    try:
        return SpecDoc.model_validate(data)
    except ValidationError:
        return None


def assert_same(data: dict[Any, Any]) -> bool:
    """plain_doc's answer is pydantic's wherever it gives one; True when it did."""
    plain = plain_doc(data)
    if plain is None:
        return False
    model = pydantic_answer(data)
    assert model is not None, f"plain accepted what pydantic refuses: {data!r}"
    for name in SPEC_FIELDS:
        ours, theirs = getattr(plain, name), getattr(model, name)
        assert ours == theirs and type(ours) is type(theirs), (name, data, ours, theirs)
    return True


def _text_of(node: ast.AST) -> str | None:
    """A string constant, or an f-string with a model id for each ``{...MODEL...}`` and a
    plain word for any other value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        else:
            parts.append(MODEL if "MODEL" in ast.unparse(value).upper() else "x1")
    return "".join(parts)


def written_specs(scratch: Path) -> list[dict[Any, Any]]:
    """Every spec document the tests and the example specs write (text constants holding a
    prompt), read through the project's YAML loader."""
    texts = [p.read_text() for p in ROOT.glob("specs/**/*.y*ml")]
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text = _text_of(node)
            if text is not None and "prompt:" in text and "name:" in text:
                texts.append(text)
    found = []
    for text in texts:
        scratch.write_text(text)
        docs, _ = load_documents(scratch, "x.yaml")
        found.extend(d.data for d in docs if isinstance(d.data, dict))
    return found


def test_fields_named_without_pydantic_are_the_models() -> None:
    """The field lists spec.py spells out are SpecDoc's and ReferenceDoc's, in their order."""
    assert tuple(SpecDoc.model_fields) == SPEC_FIELDS
    assert KNOWN_KEYS["referenceImages.*"] == tuple(ReferenceDoc.model_fields)
    assert tuple(PlainDoc.__dataclass_fields__) == SPEC_FIELDS


def test_every_written_spec(tmp_path: Path) -> None:
    """Each spec document in the tests and examples: same answer, and many are plain."""
    docs = written_specs(tmp_path / "spec.yaml")
    assert len(docs) > 50
    accepted = sum(assert_same(doc) for doc in docs)
    assert accepted > len(docs) // 3


@pytest.mark.parametrize("field", sorted(VARIANTS))
def test_each_field_variant(field: str) -> None:
    """One field at a time over its variants, on a plain base and on one with every field set."""
    full = {**BASE, "aspectRatio": "9:16", "resolution": "1080p", "durationSeconds": 8,
            "personGeneration": "allow_all", "enhancePrompt": False, "negativePrompt": "blur",
            "seed": 7, "take": "3f9a2c1b"}  # fmt: skip
    for base in (BASE, full):
        for value in VARIANTS[field]:
            assert_same({**base, field: value})
        absent = {k: v for k, v in base.items() if k != field}
        assert_same(absent)


def test_generated_combinations() -> None:
    """Thousands of random documents over every field's variants: never a different answer."""
    rng = random.Random(11)
    fields = sorted(VARIANTS)
    accepted = 0
    for _ in range(4000):
        data: dict[Any, Any] = dict(BASE)
        for field in rng.sample(fields, rng.randint(0, 6)):
            data[field] = rng.choice(VARIANTS[field])
        if rng.random() < 0.05:
            data[1] = "a key that is not text"
        accepted += assert_same(data)
    assert accepted > 500


CONFIG_VARIANTS: dict[str, list[Any]] = {
    "defaults": [
        {},
        None,
        {"enhancePrompt": False},
        {"resolution": "4k", "nope": [1]},
        {1: 2},
        [],
        "x",
    ],
    "outputDir": [
        "videos",
        "out/clips",
        "./videos",
        "videos/",
        "",
        ".",
        "/abs",
        "../x",
        "state/x",
        "a\\b",
        "a\0b",
        5,
        None,
        "specs",
    ],
    "limits": [{"concurrency": 4}],
    "nope": [1],
}


@pytest.mark.parametrize("pair", list(itertools.product(*CONFIG_VARIANTS.values()))[:400])
def test_config_plain_matches_the_model(pair: tuple[Any, ...]) -> None:
    """reconcile.yaml's plain shape gives the settings its pydantic model gives."""
    for keys in itertools.product((False, True), repeat=len(pair)):
        data = {k: v for k, v, on in zip(CONFIG_VARIANTS, pair, keys, strict=True) if on}
        plain = config_module._plain(data)
        if plain is None:
            continue
        parsed = config_module.schema()[0].model_validate(data)
        assert plain == Config(defaults=parsed.defaults, output_dir=parsed.outputDir), data


def test_config_through_pydantic_still_checked(tmp_path: Path) -> None:
    """Settings beyond the plain shape (limits, models) still go through the model."""
    (tmp_path / "reconcile.yaml").write_text(
        "outputDir: clips/\nlimits: {concurrency: 4}\nmodels: {m: {price: {720p: 0.2}}}\n"
    )
    config = load_config(tmp_path)
    assert (config.output_dir, config.concurrency) == ("clips", 4)
    assert config.models["m"].price == {"720p": 0.2}
    assert config.lines["limits"] == 2


def test_a_cold_load_of_plain_specs_imports_no_pydantic(tmp_path: Path) -> None:
    """A repo of valid plain specs (and a plain reconcile.yaml) loads without pydantic."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "reconcile.yaml").write_text("outputDir: videos\ndefaults:\n  seed: 3\n")
    for i in range(3):
        (tmp_path / "specs" / f"s{i}.yaml").write_text(
            f"name: s{i}\nmodel: {MODEL}\nprompt: clip {i}\ndurationSeconds: 6\n"
        )
    code = (
        "import sys; from pathlib import Path; from reconciler.config import load_config;"
        "from reconciler.loader import load_specs; r = Path(sys.argv[1]);"
        "res = load_specs(r, load_config(r)); assert len(res.specs) == 3, res.problems;"
        "print(sorted(m for m in sys.modules if m.startswith('pydantic')))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, check=True, cwd=ROOT)  # fmt: skip
    assert done.stdout.strip() == "[]"
