"""The spec key's invariants (DESIGN.md, "Identity"), on real spec files loaded from tmp_path.

Same key means the same paid generation, so both directions matter: anything that does not decide
the video (defaults written out, order, comments, name, file, output folder, image path) must keep
the key, and anything that does (prompt, model, each parameter, image bytes, source video) must
change it. Also the submit body built from a loaded spec.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import textwrap
from pathlib import Path

import pytest
from conftest import jpeg_bytes, png_bytes

from reconciler.config import load_config
from reconciler.errors import SpecErrors
from reconciler.loader import load_specs
from reconciler.spec import Desired

Files = dict[str, str | bytes]

BASE = """
name: hero
model: veo-3.1-fast-generate-preview
prompt: A misty pine forest at sunrise.
"""
WITH_IMAGE = BASE + "image: ../assets/first.png\n"
UPLOAD_URI = "https://api.gptproto.com/upload/v1beta/files/abc:download?alt=media"
PLAIN_URI = "https://api.gptproto.com/v1beta/files/abc:download?alt=media"
GOOGLE_URI = "https://generativelanguage.googleapis.com/v1beta/files/abc:download?alt=media"
OTHER_URI = "https://api.gptproto.com/v1beta/files/def:download?alt=media"
_repos = itertools.count()


def spec(extra: str = "", base: str = BASE) -> str:
    return textwrap.dedent(base).lstrip() + textwrap.dedent(extra).lstrip()


def write(root: Path, files: Files) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def load_one(tmp_path: Path, files: Files) -> tuple[Path, Desired]:
    """Build a fresh repo from ``files`` and load its only spec (or the one named hero)."""
    root = tmp_path / f"repo{next(_repos)}"
    root.mkdir()
    write(root, files)
    result = load_specs(root, load_config(root))
    assert result.problems == []
    if len(result.specs) == 1:
        return root, result.specs[0]
    (desired,) = [s for s in result.specs if s.name == "hero"]
    return root, desired


def key_of(tmp_path: Path, files: Files) -> str:
    return load_one(tmp_path, files)[1].key


PLAIN = {"specs/hero.yaml": spec()}
IMAGE = {"specs/hero.yaml": spec(base=WITH_IMAGE), "assets/first.png": png_bytes(1)}

SAME = {
    "aspectRatio 16:9 written out": {"specs/hero.yaml": spec('aspectRatio: "16:9"\n')},
    "resolution 720p written out": {"specs/hero.yaml": spec("resolution: 720p\n")},
    "durationSeconds 8 written out": {"specs/hero.yaml": spec("durationSeconds: 8\n")},
    "durationSeconds '8' as a string": {"specs/hero.yaml": spec('durationSeconds: "8"\n')},
    "enhancePrompt true written out": {"specs/hero.yaml": spec("enhancePrompt: true\n")},
    "blank negativePrompt": {"specs/hero.yaml": spec('negativePrompt: "   "\n')},
    "every default written out": {
        "specs/hero.yaml": spec(
            'aspectRatio: "16:9"\nresolution: 720p\ndurationSeconds: 8\nenhancePrompt: true\n'
        )
    },
    "keys in another order": {
        "specs/hero.yaml": (
            "prompt: A misty pine forest at sunrise.\n"
            "model: veo-3.1-fast-generate-preview\n"
            "name: hero\n"
        )
    },
    "comments": {
        "specs/hero.yaml": "# the opening shot\n"
        + spec().replace("sunrise.", "sunrise.  # keep it short")
    },
    "another name": {"specs/hero.yaml": spec().replace("name: hero", "name: opening-shot")},
    "another file, deeper, .yml": {"specs/scenes/outdoor/forest.yml": spec()},
    "second document of a file": {
        "specs/hero.yaml": "name: intro\nmodel: veo-3.1-generate-preview\nprompt: Title.\n---\n"
        + spec(),
    },
    "outputDir in reconcile.yaml": {
        "specs/hero.yaml": spec(),
        "reconcile.yaml": "outputDir: clips\n",
    },
    "reconcile.yaml defaults equal to the built-in ones": {
        "specs/hero.yaml": spec(),
        "reconcile.yaml": (
            "defaults:\n"
            '  aspectRatio: "16:9"\n'
            "  resolution: 720p\n"
            "  durationSeconds: 8\n"
            "  enhancePrompt: true\n"
        ),
    },
    "model from reconcile.yaml defaults": {
        "specs/hero.yaml": "name: hero\nprompt: A misty pine forest at sunrise.\n",
        "reconcile.yaml": "defaults:\n  model: veo-3.1-fast-generate-preview\n",
    },
    "prompt with surrounding whitespace": {
        "specs/hero.yaml": spec().replace(
            "prompt: A misty pine forest at sunrise.",
            'prompt: "  A misty pine forest at sunrise.\\n\\n"',
        )
    },
    "prompt folded (>) over two lines": {
        "specs/hero.yaml": spec().replace(
            "prompt: A misty pine forest at sunrise.",
            "prompt: >\n  A misty pine forest\n  at sunrise.\n",
        )
    },
    "prompt as a literal block (|)": {
        "specs/hero.yaml": spec().replace(
            "prompt: A misty pine forest at sunrise.",
            "prompt: |\n  A misty pine forest at sunrise.\n",
        )
    },
}


@pytest.mark.parametrize("variant", SAME.values(), ids=SAME.keys())
def test_key_unchanged_by(tmp_path: Path, variant: Files) -> None:
    """Writing a spec differently, without changing what it asks for, keeps its key."""
    assert key_of(tmp_path, variant) == key_of(tmp_path, PLAIN)


DIFFERENT = {
    "prompt": {"specs/hero.yaml": spec().replace("sunrise", "sunset")},
    "prompt case": {"specs/hero.yaml": spec().replace("A misty", "a misty")},
    "model": {"specs/hero.yaml": spec().replace("-fast-generate", "-generate")},
    "aspectRatio 9:16": {"specs/hero.yaml": spec('aspectRatio: "9:16"\n')},
    "resolution 1080p": {"specs/hero.yaml": spec("resolution: 1080p\n")},
    "resolution 4k": {"specs/hero.yaml": spec("resolution: 4k\n")},
    "durationSeconds 4": {"specs/hero.yaml": spec("durationSeconds: 4\n")},
    "durationSeconds 6": {"specs/hero.yaml": spec("durationSeconds: 6\n")},
    "enhancePrompt false": {"specs/hero.yaml": spec("enhancePrompt: false\n")},
    "personGeneration allow_all (unset before)": {
        "specs/hero.yaml": spec("personGeneration: allow_all\n")
    },
    "personGeneration allow_adult (unset before)": {
        "specs/hero.yaml": spec("personGeneration: allow_adult\n")
    },
    "negativePrompt": {"specs/hero.yaml": spec("negativePrompt: people\n")},
    "a non-default default in reconcile.yaml": {
        "specs/hero.yaml": spec(),
        "reconcile.yaml": "defaults:\n  resolution: 1080p\n",
    },
    "an image": IMAGE,
    "a source video": {"specs/hero.yaml": spec(f"video:\n  uri: {PLAIN_URI}\n")},
}


@pytest.mark.parametrize("variant", DIFFERENT.values(), ids=DIFFERENT.keys())
def test_key_changed_by(tmp_path: Path, variant: Files) -> None:
    """Changing anything that decides the video changes the key."""
    assert key_of(tmp_path, variant) != key_of(tmp_path, PLAIN)


PAIRS = {
    "image moved and renamed (same bytes): same key": (
        IMAGE,
        {
            "specs/deep/hero.yaml": spec(base=BASE + "image: ../../art/opening.png\n"),
            "art/opening.png": png_bytes(1),
        },
        True,
    ),
    "image with one byte changed: new key": (
        IMAGE,
        {**IMAGE, "assets/first.png": png_bytes(1)[:-1] + b"\x00"},
        False,
    ),
    "image pixels changed: new key": (IMAGE, {**IMAGE, "assets/first.png": png_bytes(2)}, False),
    "PNG vs JPEG: new key": (
        IMAGE,
        {
            "specs/hero.yaml": spec(base=BASE + "image: ../assets/first.jpg\n"),
            "assets/first.jpg": jpeg_bytes(),
        },
        False,
    ),
    "/upload/ vs plain download URI of one file id: same key": (
        {"specs/hero.yaml": spec(f"video:\n  uri: {UPLOAD_URI}\n")},
        {"specs/hero.yaml": spec(f"video:\n  uri: {PLAIN_URI}\n")},
        True,
    ),
    "another host serving the same file id: same key": (
        {"specs/hero.yaml": spec(f"video:\n  uri: {GOOGLE_URI}\n")},
        {"specs/hero.yaml": spec(f"video:\n  uri: {PLAIN_URI}\n")},
        True,
    ),
    "another video file id: new key": (
        {"specs/hero.yaml": spec(f"video:\n  uri: {PLAIN_URI}\n")},
        {"specs/hero.yaml": spec(f"video:\n  uri: {OTHER_URI}\n")},
        False,
    ),
    "personGeneration allow_all vs allow_adult: new key": (
        {"specs/hero.yaml": spec("personGeneration: allow_all\n")},
        {"specs/hero.yaml": spec("personGeneration: allow_adult\n")},
        False,
    ),
    "durationSeconds 4 vs 6: new key": (
        {"specs/hero.yaml": spec("durationSeconds: 4\n")},
        {"specs/hero.yaml": spec("durationSeconds: 6\n")},
        False,
    ),
}


@pytest.mark.parametrize(("a", "b", "same"), PAIRS.values(), ids=PAIRS.keys())
def test_key_pairs(tmp_path: Path, a: Files, b: Files, same: bool) -> None:
    """Images count by their bytes and type, source videos by their file id."""
    assert (key_of(tmp_path, a) == key_of(tmp_path, b)) is same


# The canonical form of PLAIN, written out by hand: sorted keys, no spaces, defaults filled in.
PLAIN_CANONICAL = (
    '{"image":null,"model":"veo-3.1-fast-generate-preview","parameters":{"aspectRatio":"16:9",'
    '"durationSeconds":8,"enhancePrompt":true,"negativePrompt":null,"personGeneration":null,'
    '"resolution":"720p"},"prompt":"A misty pine forest at sunrise.","v":1,"video":null}'
)


def test_key_is_pinned(tmp_path: Path) -> None:
    """The key of a fixed spec never drifts: a changed canonical form would re-bill every video."""
    key = key_of(tmp_path, PLAIN)
    assert key == hashlib.sha256(PLAIN_CANONICAL.encode()).hexdigest()
    assert key == "2dec1067ddab3101d50562113a52855a661c91551b1adbe004bb8040479e2cc4"


# -- the submit body --------------------------------------------------------------------------


def test_request_body_of_a_text_spec(tmp_path: Path) -> None:
    """A text spec sends its prompt and the filled-in defaults, and nothing unset."""
    root, desired = load_one(tmp_path, PLAIN)
    assert desired.request_body(root) == {
        "instances": [{"prompt": "A misty pine forest at sunrise."}],
        "parameters": {
            "aspectRatio": "16:9",
            "resolution": "720p",
            "durationSeconds": 8,
            "enhancePrompt": True,
        },
    }


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("", 8),
        ("durationSeconds: 4\n", 4),
        ('durationSeconds: "6"\n', 6),
        ("durationSeconds: 8.0\n", 8),
    ],
)
def test_request_body_duration_is_an_int(tmp_path: Path, written: str, sent: int) -> None:
    """durationSeconds goes out as a JSON number (an int), however the spec wrote it."""
    root, desired = load_one(tmp_path, {"specs/hero.yaml": spec(written)})
    value = desired.request_body(root)["parameters"]["durationSeconds"]
    assert type(value) is int and value == sent


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("", None),
        ("personGeneration: allow_all\n", "allow_all"),
        ("personGeneration: allow_adult\n", "allow_adult"),
    ],
)
def test_request_body_person_generation_only_when_set(
    tmp_path: Path, written: str, sent: str | None
) -> None:
    """personGeneration is sent only when the spec sets it."""
    root, desired = load_one(tmp_path, {"specs/hero.yaml": spec(written)})
    assert desired.request_body(root)["parameters"].get("personGeneration", None) == sent
    assert ("personGeneration" in desired.request_body(root)["parameters"]) is (sent is not None)


@pytest.mark.parametrize(
    ("name", "data", "mime"),
    [("first.png", png_bytes(3), "image/png"), ("first.jpg", jpeg_bytes(), "image/jpeg")],
)
def test_request_body_image_is_base64_with_mime(
    tmp_path: Path, name: str, data: bytes, mime: str
) -> None:
    """An image goes out as bytesBase64Encoded of its bytes plus its detected mimeType."""
    files: Files = {"specs/hero.yaml": spec(f"image: ../assets/{name}\n"), f"assets/{name}": data}
    root, desired = load_one(tmp_path, files)
    (instance,) = desired.request_body(root)["instances"]
    assert instance["image"] == {
        "bytesBase64Encoded": base64.b64encode(data).decode("ascii"),
        "mimeType": mime,
    }
    assert desired.image is not None and desired.image.sha256 == hashlib.sha256(data).hexdigest()


def test_request_body_video_uri(tmp_path: Path) -> None:
    """A video-to-video spec sends its source video's URI and no image."""
    root, desired = load_one(tmp_path, {"specs/hero.yaml": spec(f"video:\n  uri: {PLAIN_URI}\n")})
    (instance,) = desired.request_body(root)["instances"]
    assert instance == {"prompt": "A misty pine forest at sunrise.", "video": {"uri": PLAIN_URI}}


def test_request_body_refuses_an_image_changed_since_load(tmp_path: Path) -> None:
    """An image edited after its key was computed is refused, naming the spec and field."""
    root, desired = load_one(tmp_path, IMAGE)
    (root / "assets/first.png").write_bytes(png_bytes(9))
    with pytest.raises(SpecErrors) as caught:
        desired.request_body(root)
    (problem,) = caught.value.problems
    assert (problem.file, problem.field) == ("specs/hero.yaml", "image")


def test_request_body_refuses_an_image_deleted_since_load(tmp_path: Path) -> None:
    """An image deleted after its key was computed is refused as a spec error, not a traceback."""
    root, desired = load_one(tmp_path, IMAGE)
    (root / "assets/first.png").unlink()
    with pytest.raises(SpecErrors):
        desired.request_body(root)
