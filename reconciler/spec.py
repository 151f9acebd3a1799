"""Specs: the pydantic model of one video, the normalized spec the planner works on, and its key.

The spec key is what makes "never pay twice" checkable: sha256 over a canonical form of everything
that decides the generated video (model, prompt, normalized parameters, image bytes and type, the
source video's identity) and nothing else (name, file, key order, comments, output folder). Two specs
with the same key are the same paid generation.

Nothing here walks folders or reads spec files: that is ``loader``, which builds ``Desired`` from
the models here. Only ``Desired.request_body`` reads a file, the image, to send it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .errors import Problem, SpecErrors
from .facts import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    DURATIONS,
    EIGHT_SECONDS,
    EXTENSION_RESOLUTION,
    EXTENSION_SECONDS,
    MAX_PROMPT_CHARS,
    PERSON_GENERATION,
    PERSON_GENERATION_BY_MODE,
    RESOLUTIONS,
    RESOLUTIONS_NEEDING_8S,
    SEED_MAX,
    ModelFacts,
    video_identity,
)

KEY_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?\Z")  # \Z: "$" takes a last "\n"
MAX_NAME_CHARS = 64
assert DEFAULT_ASPECT_RATIO in ASPECT_RATIOS and DEFAULT_RESOLUTION in RESOLUTIONS
assert DEFAULT_DURATION in DURATIONS


@dataclass
class PlainDoc:
    """A spec document that ``plain_doc`` proved valid: the same fields, with the same values,
    as the pydantic model (``specdoc.SpecDoc``) would give it, without importing pydantic."""

    name: str
    model: str
    prompt: str
    aspectRatio: str = DEFAULT_ASPECT_RATIO
    resolution: str = DEFAULT_RESOLUTION
    durationSeconds: int | None = None
    personGeneration: str | None = None
    enhancePrompt: bool = True
    negativePrompt: str | None = None
    image: str | None = None
    lastFrame: str | None = None
    referenceImages: None = None  # those with these fields go through pydantic
    seed: int | None = None
    video: None = None
    take: str | None = None


_TAKE_RE = re.compile(r"[0-9a-f]{8,64}")
# SpecDoc's fields, in its order (tests/test_plain_doc.py checks): named here without pydantic.
SPEC_FIELDS = tuple(f.name for f in fields(PlainDoc))
_PLAIN = frozenset(SPEC_FIELDS) - {"referenceImages", "video"}  # those go through pydantic


def plain_doc(data: dict[Any, Any]) -> PlainDoc | None:
    """The document as ``SpecDoc.model_validate`` would give it, when every value is of the one
    plain shape this can prove valid (exact types, no coercion); None for anything else, which
    then goes through pydantic, so every error and every coercion stays pydantic's. Why: a cold
    load of thousands of valid specs then never imports pydantic (0.1 s here) nor builds its
    models. ``tests/test_plain_doc.py`` holds the two to the same answers."""
    if not _PLAIN.issuperset(data):
        return None
    get = data.get
    name, model, prompt = get("name"), get("model"), get("prompt")
    if type(name) is not str or not NAME_RE.match(name) or type(model) is not str:
        return None
    if type(prompt) is not str or not model.strip():
        return None
    prompt = prompt.strip()
    if not prompt or len(prompt) > MAX_PROMPT_CHARS:
        return None
    doc = PlainDoc(name, model.strip(), prompt)
    for key, allowed in (("aspectRatio", ASPECT_RATIOS), ("resolution", RESOLUTIONS),
                         ("personGeneration", PERSON_GENERATION)):  # fmt: skip
        value = get(key, _UNSET)
        if value is _UNSET or (value is None and key == "personGeneration"):
            continue
        if type(value) is not str or value not in allowed:
            return None
        setattr(doc, key, value)
    for key in ("negativePrompt", "image", "lastFrame", "take"):
        value = get(key, _UNSET)
        if value is _UNSET or (value is None and key in ("negativePrompt", "take")):
            continue
        if type(value) is not str or (key in ("image", "lastFrame") and not value.strip()):
            return None
        if key == "take" and not _TAKE_RE.fullmatch(value):
            return None
        setattr(doc, key, value)
    duration, seed, enhance = get("durationSeconds"), get("seed"), get("enhancePrompt", True)
    if duration is not None and (type(duration) is not int or duration not in DURATIONS):
        return None
    if seed is not None and (type(seed) is not int or not 0 <= seed <= SEED_MAX):
        return None
    if type(enhance) is not bool:
        return None
    doc.durationSeconds, doc.seed, doc.enhancePrompt = duration, seed, enhance
    return doc


_UNSET = object()


class SpecFields(Protocol):
    """What the rules read of a spec document: a ``PlainDoc`` or pydantic's ``SpecDoc``."""

    @property
    def model(self) -> str: ...
    @property
    def resolution(self) -> str: ...
    @property
    def durationSeconds(self) -> int | None: ...
    @property
    def personGeneration(self) -> str | None: ...
    @property
    def image(self) -> str | None: ...
    @property
    def lastFrame(self) -> str | None: ...
    @property
    def referenceImages(self) -> Sequence[object] | None: ...
    @property
    def video(self) -> object | None: ...


def mode(spec: SpecFields) -> str:
    """Which of the API's modes a spec asks for, as personGeneration's rules name them."""
    if spec.video is not None:
        return "video"
    if spec.referenceImages:
        return "referenceImages"
    return "image" if spec.image is not None else "text"


def rule_problems(spec: SpecFields, model: ModelFacts | None = None) -> list[tuple[str, str]]:
    """Rules across fields, as (field, message): the API's table that no single field shows, and
    (given the model's catalog entry) what that model accepts."""
    found = []
    if spec.image is not None and spec.video is not None:
        found.append(("video", "'image' and 'video' cannot be used together: pick one mode"))
    if spec.lastFrame is not None and spec.image is None:
        found.append(("lastFrame", "needs 'image' too: the first and last frames go together"))
    if spec.referenceImages and spec.video is not None:
        found.append(("referenceImages", "cannot be used with 'video' (an extension)"))
    needs_8 = [
        why
        for why, applies in (
            ("video-to-video (extension)", spec.video is not None),
            ("reference images", bool(spec.referenceImages)),
        )
        if applies
    ]
    if spec.video is not None and spec.resolution != EXTENSION_RESOLUTION:
        message = f"video-to-video (extension) only supports {EXTENSION_RESOLUTION}"
        found.append(("resolution", message))
    for why in needs_8:
        if spec.durationSeconds not in (None, EIGHT_SECONDS):
            found.append(("durationSeconds", f"{why} needs {EIGHT_SECONDS} (or unset)"))
    if spec.resolution in RESOLUTIONS_NEEDING_8S and spec.durationSeconds not in (None, 8):
        found.append(
            (
                "durationSeconds",
                f"resolution {spec.resolution} needs 8 seconds (got {spec.durationSeconds}); "
                "use 720p for 4 or 6 seconds",
            )
        )
    allowed = PERSON_GENERATION_BY_MODE[mode(spec)]
    if spec.personGeneration is not None and spec.personGeneration not in allowed:
        found.append(
            (
                "personGeneration",
                f"{spec.personGeneration} is not allowed with {_mode_words(spec)}; use "
                f"{' or '.join(allowed)}, or leave it unset",
            )
        )
    if model is not None:
        found.extend(_model_problems(spec, model))
    return found


def _mode_words(spec: SpecFields) -> str:
    return {
        "video": "video-to-video (extension)",
        "referenceImages": "reference images",
        "image": "an image (first frame)",
        "text": "text-to-video",
    }[mode(spec)]


def _model_problems(spec: SpecFields, model: ModelFacts) -> list[tuple[str, str]]:
    """What this spec asks of its model that the model's catalog entry does not offer."""
    found = []
    if spec.resolution not in model.resolutions:
        offered = ", ".join(model.resolutions)
        found.append(("resolution", f"{spec.model} offers {offered}, not {spec.resolution}"))
    duration = spec.durationSeconds or DEFAULT_DURATION
    if duration not in model.durations:
        offered = ", ".join(str(d) for d in model.durations)
        found.append(("durationSeconds", f"{spec.model} offers {offered} s, not {duration}"))
    for feature, used in (
        ("image", spec.image is not None),
        ("lastFrame", spec.lastFrame is not None),
        ("referenceImages", bool(spec.referenceImages)),
        ("video", spec.video is not None),
    ):
        if used and feature not in model.features:
            found.append((feature, f"{spec.model} does not take '{feature}'"))
    return found


FORBIDDEN_DEFAULTS = ("name", "image", "lastFrame", "referenceImages", "video", "take")
KNOWN_KEYS = {
    "": SPEC_FIELDS,
    "video": ("uri", "from"),
    "referenceImages.*": ("image", "referenceType"),
}


@dataclass(frozen=True)
class ImageInput:
    """An image sent with a spec, identified by its bytes: moving or renaming it changes nothing."""

    path: str  # relative to the repo root
    sha256: str
    mime_type: str
    size: int

    def identity(self) -> dict[str, str]:
        return {"sha256": self.sha256, "mimeType": self.mime_type}

    def wire(self, repo: Path, file: str, field: str) -> dict[str, str]:
        """The API's image object; re-reads the file and refuses it if it changed since the key
        was made (the key would no longer name what is sent)."""
        try:
            data = (repo / self.path).read_bytes()
        except OSError as exc:
            message = f"{self.path} can no longer be read ({exc.strerror}); run again"
            raise SpecErrors([Problem(file, message, field=field)]) from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise SpecErrors([Problem(file, "changed while running; run again", field=field)])
        return {"bytesBase64Encoded": base64.b64encode(data).decode("ascii"),
                "mimeType": self.mime_type}  # fmt: skip


@dataclass(frozen=True)
class Reference:
    """A reference image and how the model is to use it."""

    image: ImageInput
    type: str = "asset"


@dataclass(frozen=True)
class Desired:
    """One validated spec, normalized, with its key: the planner's unit of desired state."""

    name: str
    file: str
    line: int
    model: str
    prompt: str
    parameters: dict[str, Any]
    image: ImageInput | None = None
    video_uri: str | None = None
    key: str = field(default="")
    last_frame: ImageInput | None = None
    references: tuple[Reference, ...] = ()
    source: str | None = None  # video: {from: NAME}: the spec whose output this one extends
    source_key: str | None = None  # that spec's key, once the chain is resolved
    depth: int = 0  # extensions from the chain's first spec (0: not an extension of a spec)
    length: float | None = None  # seconds of the resulting video, when known
    take: str | None = None  # a pinned earlier take (sha256 prefix): not part of the key

    @property
    def seconds(self) -> float:
        """Seconds of video generated (and paid for): an extension adds about 7."""
        if self.video_uri is not None or self.source is not None:
            return EXTENSION_SECONDS
        return float(self.duration)

    @property
    def duration(self) -> int:
        """Seconds of video paid for: always set, the loader fills in the default."""
        return int(self.parameters["durationSeconds"])

    @property
    def resolution(self) -> str:
        """The resolution paid for and checked by verify: always set, defaults filled in."""
        return str(self.parameters["resolution"])

    def describe(self) -> dict[str, Any]:
        """The spec as a reviewer reads it: the fields as written (defaults filled in), images by
        path and bytes. What a plan diffs when a replace is proposed; never part of the key."""
        out: dict[str, Any] = {"model": self.model, "prompt": self.prompt}
        out.update({k: v for k, v in self.parameters.items() if v is not None})
        for field_name, image in (("image", self.image), ("lastFrame", self.last_frame)):
            if image is not None:
                out[field_name] = {"path": image.path, "sha256": image.sha256}
        if self.references:
            out["referenceImages"] = [
                {"path": r.image.path, "sha256": r.image.sha256, "referenceType": r.type}
                for r in self.references
            ]
        if self.source is not None:
            out["video"] = {"from": self.source, "key": self.source_key}
        elif self.video_uri is not None:
            out["video"] = {"uri": self.video_uri}
        return out

    def canonical(self) -> dict[str, Any]:
        """The key's input: only what decides the video, defaults filled in. Fields added since
        the first release appear only when set, so no existing spec's key moves."""
        video: dict[str, str] | None = None
        if self.source is not None:
            video = {"from": self.source_key or f"unresolved:{self.source}"}
        elif self.video_uri is not None:
            video = {"file": video_identity(self.video_uri)}
        out: dict[str, Any] = {
            "v": KEY_VERSION,
            "model": self.model,
            "prompt": self.prompt,
            "parameters": {k: self.parameters.get(k) for k in _KEY_PARAMETERS},
            "image": None if self.image is None else self.image.identity(),
            "video": video,
        }
        if self.parameters.get("seed") is not None:
            out["parameters"]["seed"] = self.parameters["seed"]
        if self.last_frame is not None:
            out["lastFrame"] = self.last_frame.identity()
        if self.references:
            out["referenceImages"] = [
                {**ref.image.identity(), "referenceType": ref.type} for ref in self.references
            ]
        return out

    @property
    def images(self) -> list[ImageInput]:
        """Every image file the request carries (first frame, last frame, references)."""
        found = [self.image, self.last_frame, *(r.image for r in self.references)]
        return [image for image in found if image is not None]

    @property
    def run_kind(self) -> tuple[str, str, float, bool]:
        """What a generation's run time depends on, as far as we can tell: when to poll it first
        (``pacing.RunTimes``). An extension (its own seconds) and a run from images apart."""
        return (self.model, self.resolution, self.seconds, bool(self.images))

    def request_body(self, repo: Path, *, source_uri: str | None = None) -> dict[str, Any]:
        """The submit body; every image is re-read and refused if it changed since the key was
        made. ``source_uri``: the provider URI of the output this spec extends (a chain)."""
        instance: dict[str, Any] = {"prompt": self.prompt}
        if self.image is not None:
            instance["image"] = self.image.wire(repo, self.file, "image")
        if self.last_frame is not None:
            instance["lastFrame"] = self.last_frame.wire(repo, self.file, "lastFrame")
        if self.references:
            instance["referenceImages"] = [
                {"image": ref.image.wire(repo, self.file, "referenceImages"),
                 "referenceType": ref.type}
                for ref in self.references
            ]  # fmt: skip
        uri = self.video_uri or source_uri
        if uri is not None:
            instance["video"] = {"uri": uri}
        params = {k: v for k, v in self.parameters.items() if v is not None}
        return {"instances": [instance], "parameters": params}


_KEY_PARAMETERS = tuple(sorted((
    "aspectRatio",
    "resolution",
    "durationSeconds",
    "personGeneration",
    "enhancePrompt",
    "negativePrompt",
)))  # fmt: skip


# One encoder for every key: json.dumps() with these options builds a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_key(desired: Desired) -> str:
    """sha256 of the canonical form as compact JSON with sorted keys: one spelling per video."""
    blob = _CANONICAL.encode(desired.canonical())
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
