"""Specs: the pydantic model of one video, loading ``specs/**`` and the spec key.

The spec key is what makes "never pay twice" checkable: sha256 over a canonical form of everything
that decides the generated video (model, prompt, normalized parameters, image bytes and type, the
source video's identity) and nothing else (name, file, key order, comments, output folder). Two specs
with the same key are the same paid generation.
"""

from __future__ import annotations

import base64
import difflib
import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import CONFIG_FILE, Config
from .errors import Problem, SpecErrors
from .facts import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    DURATIONS,
    EXTENSION_RESOLUTION,
    IMAGE_MAGIC,
    MAX_IMAGE_BYTES,
    MAX_PROMPT_CHARS,
    MODELS,
    PERSON_GENERATION,
    RESOLUTIONS,
    RESOLUTIONS_NEEDING_8S,
    video_identity,
)
from .yamlio import Document, load_documents, pydantic_problems, show

KEY_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
MAX_NAME_CHARS = 64

# The API's allowed values, spelled out because mypy reads a Literal only from literals. The asserts
# tie each to its tuple in facts, order included: pydantic's "use one of …" lists them in this order.
ModelName = Literal["veo-3.1-generate-preview", "veo-3.1-fast-generate-preview"]
AspectRatio = Literal["16:9", "9:16"]
Resolution = Literal["720p", "1080p", "4k"]
Duration = Literal[4, 6, 8]
PersonGeneration = Literal["allow_all", "allow_adult"]
assert get_args(ModelName) == MODELS
assert get_args(AspectRatio) == ASPECT_RATIOS
assert get_args(Resolution) == tuple(RESOLUTIONS)
assert get_args(Duration) == DURATIONS
assert get_args(PersonGeneration) == PERSON_GENERATION
assert DEFAULT_ASPECT_RATIO in ASPECT_RATIOS and DEFAULT_RESOLUTION in RESOLUTIONS
assert DEFAULT_DURATION in DURATIONS


class VideoRef(BaseModel):
    """The source of a video-to-video extension: a provider URI, or another spec's output."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uri: str | None = None
    from_: str | None = Field(default=None, alias="from")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping such as {{uri: https://…}}, not {show(value)}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> VideoRef:
        if (self.uri is None) == (self.from_ is None):
            raise ValueError("give exactly one of 'uri' or 'from'")
        if self.from_ is not None:
            raise ValueError(
                "'from' (chaining onto another spec's output) is not supported yet; "
                "use 'uri' with the provider's video URI"
            )
        if self.uri is not None and not self.uri.startswith(("https://", "http://")):
            raise ValueError("'uri' must be an http(s) URI of a video the provider generated")
        return self


class SpecDoc(BaseModel):
    """One spec document as written. Keys are the API's own parameter names."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: ModelName
    prompt: str
    # mypy sees the facts' defaults as plain str; the asserts above make these casts true.
    aspectRatio: AspectRatio = cast(AspectRatio, DEFAULT_ASPECT_RATIO)
    resolution: Resolution = cast(Resolution, DEFAULT_RESOLUTION)
    durationSeconds: Duration | None = None
    personGeneration: PersonGeneration | None = None
    enhancePrompt: bool = True
    negativePrompt: str | None = None
    image: str | None = None
    video: VideoRef | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if NAME_RE.match(value):
            return value
        if len(value) > MAX_NAME_CHARS:
            raise ValueError(
                f"is {len(value)} characters long; a name has at most {MAX_NAME_CHARS}"
            )
        guess = slugify(value)
        raise ValueError(
            f"{value!r} is not a slug: use 1-{MAX_NAME_CHARS} lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
            + (f" (such as {guess!r})" if guess else "")
        )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"{len(value)} characters is longer than the API accepts "
                f"(about 1,024 tokens; keep it under {MAX_PROMPT_CHARS} characters)"
            )
        return value

    @field_validator("image")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: give the image's path relative to this spec file")
        return value

    @field_validator("durationSeconds", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # GPTProto's docs show it as a string; accept "8" in specs, always send a number.
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def slugify(value: str) -> str:
    """The nearest valid name, offered in the error message; "" when there is none."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", value.lower()).strip("-_")[:MAX_NAME_CHARS].strip("-_")
    return slug if NAME_RE.match(slug) else ""


def rule_problems(spec: SpecDoc) -> list[tuple[str, str]]:
    """Rules across fields, as (field, message): the API's table that no single field shows."""
    found = []
    if spec.image is not None and spec.video is not None:
        found.append(("video", "'image' and 'video' cannot be used together: pick one mode"))
    if spec.video is not None:
        if spec.resolution != EXTENSION_RESOLUTION:
            message = f"video-to-video (extension) only supports {EXTENSION_RESOLUTION}"
            found.append(("resolution", message))
        if spec.durationSeconds not in (None, 8):
            found.append(("durationSeconds", "video-to-video (extension) needs 8 (or unset)"))
    if spec.resolution in RESOLUTIONS_NEEDING_8S and spec.durationSeconds not in (None, 8):
        found.append(
            (
                "durationSeconds",
                f"resolution {spec.resolution} needs 8 seconds (got {spec.durationSeconds}); "
                "use 720p for 4 or 6 seconds",
            )
        )
    return found


SPEC_FIELDS = tuple(SpecDoc.model_fields)
FORBIDDEN_DEFAULTS = ("name", "image", "video")
KNOWN_KEYS = {"": SPEC_FIELDS, "video": ("uri", "from")}


@dataclass(frozen=True)
class ImageInput:
    """A first-frame image, identified by its bytes: moving or renaming it changes nothing."""

    path: str  # relative to the repo root
    sha256: str
    mime_type: str
    size: int


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

    @property
    def duration(self) -> int:
        return int(self.parameters["durationSeconds"])

    @property
    def resolution(self) -> str:
        return str(self.parameters["resolution"])

    def canonical(self) -> dict[str, Any]:
        """The key's input: only what decides the video, defaults filled in."""
        return {
            "v": KEY_VERSION,
            "model": self.model,
            "prompt": self.prompt,
            "parameters": {k: self.parameters.get(k) for k in sorted(_KEY_PARAMETERS)},
            "image": None
            if self.image is None
            else {"sha256": self.image.sha256, "mimeType": self.image.mime_type},
            "video": None if self.video_uri is None else {"file": video_identity(self.video_uri)},
        }

    def request_body(self, repo: Path) -> dict[str, Any]:
        """The submit body; re-reads the image and refuses it if it changed since the key was made."""
        instance: dict[str, Any] = {"prompt": self.prompt}
        if self.image is not None:
            try:
                data = (repo / self.image.path).read_bytes()
            except OSError as exc:
                message = f"{self.image.path} can no longer be read ({exc.strerror}); run again"
                raise SpecErrors([Problem(self.file, message, field="image")]) from None
            if hashlib.sha256(data).hexdigest() != self.image.sha256:
                raise SpecErrors(
                    [Problem(self.file, "changed while running; run again", field="image")]
                )
            instance["image"] = {
                "bytesBase64Encoded": base64.b64encode(data).decode("ascii"),
                "mimeType": self.image.mime_type,
            }
        if self.video_uri is not None:
            instance["video"] = {"uri": self.video_uri}
        params = {k: v for k, v in self.parameters.items() if v is not None}
        return {"instances": [instance], "parameters": params}


_KEY_PARAMETERS = (
    "aspectRatio",
    "resolution",
    "durationSeconds",
    "personGeneration",
    "enhancePrompt",
    "negativePrompt",
)


def spec_key(desired: Desired) -> str:
    blob = json.dumps(
        desired.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class LoadResult:
    """Everything found under specs/: valid specs, and problems per file (for watch's partial reloads)."""

    specs: list[Desired] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # spec file -> names it defines
    bad_files: set[str] = field(default_factory=set)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise SpecErrors(self.problems)


def spec_files(repo: Path, problems: list[Problem] | None = None) -> list[Path]:
    """Spec files in a stable order; hidden and editor temp files are skipped.

    A folder that cannot be read is a problem, never silence: a spec that cannot be seen would
    otherwise count as deleted, and its video would be removed.
    """
    root = repo / "specs"
    if not root.is_dir():
        return []
    found = []

    def unreadable(exc: OSError) -> None:
        if problems is not None:
            where = Path(exc.filename or root).relative_to(repo).as_posix()
            problems.append(Problem(where, f"cannot be read ({exc.strerror})"))

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.endswith((".yaml", ".yml")) and not name.startswith("."):
                path = Path(folder) / name
                if path.is_file():
                    found.append(path)
    return sorted(found)


def load_specs(repo: Path, config: Config) -> LoadResult:
    """Load and validate every spec; never raises for user input, collects problems instead."""
    repo = repo.resolve()
    result = LoadResult()
    default_problems = check_defaults(config)
    result.problems.extend(default_problems)
    # A bad default is reported once, against reconcile.yaml, not again in every spec using it.
    reported = frozenset(
        p.field.split(".")[1] for p in default_problems if p.field and p.field.count(".") >= 1
    )
    seen: dict[str, str] = {}
    for path in spec_files(repo, result.problems):
        rel = path.relative_to(repo).as_posix()
        specs, problems = load_file(path, repo, config, reported=reported)
        result.files[rel] = [s.name for s in specs]
        for spec in specs:
            if spec.name in seen:
                problems.append(
                    Problem(
                        rel,
                        f"duplicate name {spec.name!r}: already defined in {seen[spec.name]}",
                        line=spec.line,
                        field="name",
                    )
                )
            else:
                seen[spec.name] = f"{rel}:{spec.line}"
                result.specs.append(spec)
        if problems:
            result.bad_files.add(rel)
            result.problems.extend(problems)
    return result


def check_defaults(config: Config) -> list[Problem]:
    """reconcile.yaml's defaults must be valid values of spec fields a whole repo can share."""
    problems = []
    top = config.lines.get("defaults")
    lines = {key: config.lines.get(f"defaults.{key}", top) for key in config.defaults}
    usable = {}
    for key, value in config.defaults.items():
        if key in FORBIDDEN_DEFAULTS:
            message = f"{key!r} cannot have a default: each spec sets its own"
        elif key not in SPEC_FIELDS:
            message = _unknown_key(key)
        else:
            usable[key] = value
            continue
        problems.append(Problem(CONFIG_FILE, message, line=lines[key], field=f"defaults.{key}"))
    if not usable:
        return problems
    # Check the values the way a spec that sets nothing else would see them.
    probe = {"name": "defaults", "model": MODELS[0], "prompt": "defaults", **usable}
    doc = Document(usable, top or 1, {k: v for k, v in lines.items() if v is not None})
    try:
        parsed = SpecDoc.model_validate(probe)
    except ValidationError as exc:
        for p in pydantic_problems(exc, CONFIG_FILE, doc, known=SPEC_FIELDS):
            if p.field is not None and p.field.split(".")[0] in usable:
                problems.append(replace(p, field=f"defaults.{p.field}"))
        return problems
    for name, message in rule_problems(parsed):
        where = lines.get(name, top)
        problems.append(Problem(CONFIG_FILE, message, line=where, field=f"defaults.{name}"))
    return problems


def _unknown_key(key: str) -> str:
    guess = difflib.get_close_matches(key, SPEC_FIELDS, n=1, cutoff=0.6)
    return "unknown key" + (f"; did you mean '{guess[0]}'?" if guess else "")


def load_file(
    path: Path, repo: Path, config: Config, *, reported: frozenset[str] = frozenset()
) -> tuple[list[Desired], list[Problem]]:
    """Validate one spec file: all of its documents, each error with file, line and field.

    ``reported`` names defaults already reported as invalid: a spec inheriting one is skipped
    without repeating the error.
    """
    rel = path.relative_to(repo).as_posix()
    docs, problems = load_documents(path, rel)
    if problems:
        return [], problems
    if not docs:
        return [], [Problem(rel, "holds no spec: the file is empty (or only comments)")]
    specs = []
    for doc in docs:
        try:
            specs.append(_desired(doc, path, rel, repo, config, reported))
        except SpecErrors as exc:
            problems.extend(exc.problems)
    return specs, problems


def _desired(
    doc: Document, path: Path, rel: str, repo: Path, config: Config, reported: frozenset[str]
) -> Desired:
    if not isinstance(doc.data, dict):
        raise SpecErrors(
            [
                Problem(
                    rel,
                    f"a spec must be a mapping of keys (name: …, model: …, prompt: …), "
                    f"not {_kind(doc.data)}",
                    line=doc.line,
                )
            ]
        )
    merged = {k: v for k, v in config.defaults.items() if k not in FORBIDDEN_DEFAULTS}
    merged.update(doc.data)
    inherited = [k for k in config.defaults if k not in doc.data]
    skip = reported.intersection(inherited)
    try:
        parsed = SpecDoc.model_validate(merged)
    except ValidationError as exc:
        problems = pydantic_problems(exc, rel, doc, known=KNOWN_KEYS)
        raise SpecErrors(
            [p for p in problems if not (p.field and p.field.split(".")[0] in skip)]
        ) from None
    rules = rule_problems(parsed)
    if rules:
        # A rule broken only by defaults already reported stops this spec without repeating it.
        broken = [(name, msg) for name, msg in rules if name not in skip]
        from_defaults = [k for k in ("resolution", "durationSeconds") if k in inherited]
        note = (
            f" ({' and '.join(from_defaults)} from {CONFIG_FILE} defaults)" if from_defaults else ""
        )
        raise SpecErrors(
            [Problem(rel, msg + note, line=doc.line_of(name), field=name) for name, msg in broken]
        )
    image = None
    if parsed.image is not None:
        image = _image(parsed.image, path, rel, repo, doc.line_of("image"))
    params = {
        "aspectRatio": parsed.aspectRatio,
        "resolution": parsed.resolution,
        "durationSeconds": parsed.durationSeconds or DEFAULT_DURATION,
        "enhancePrompt": parsed.enhancePrompt,
        "personGeneration": parsed.personGeneration,
        # A blank negative prompt is no negative prompt: same key, and nothing sent.
        "negativePrompt": (parsed.negativePrompt or "").strip() or None,
    }
    desired = Desired(
        name=parsed.name,
        file=rel,
        line=doc.line,
        model=parsed.model,
        prompt=parsed.prompt,
        parameters=params,
        image=image,
        video_uri=parsed.video.uri if parsed.video else None,
    )
    return Desired(**{**desired.__dict__, "key": spec_key(desired)})


def _kind(data: Any) -> str:
    if isinstance(data, list):
        return "a list"
    if isinstance(data, bool):
        return f"the boolean {show(data)}"
    if isinstance(data, int | float):
        return f"the number {show(data)}"
    return f"the text {show(data)}"


def _image(value: str, spec_path: Path, rel: str, repo: Path, line: int) -> ImageInput:
    def bad(message: str) -> SpecErrors:
        return SpecErrors([Problem(rel, message, line=line, field="image")])

    if "\0" in value:
        raise bad(f"{value!r} is not a usable path (it holds a NUL character)")
    written = spec_path.parent / value
    try:
        target = written.resolve()
        if not target.is_relative_to(repo):
            inside = Path(os.path.normpath(written)).is_relative_to(repo)
            link = " through a symlink" if inside else ""
            raise bad(f"{value!r} leaves the asset repo{link}; images must live inside it")
        shown = target.relative_to(repo).as_posix()
        if target.is_dir():
            raise bad(f"{value!r} is a folder ({shown}), not an image file")
        if not target.is_file():
            raise bad(f"{value!r} not found (looked for {shown}, relative to this spec file)")
        if target.stat().st_size > MAX_IMAGE_BYTES:
            raise bad(_too_big(value, target.stat().st_size))
        data = target.read_bytes()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        raise bad(f"{value!r} is a symlink loop") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise bad(f"{value!r} is a symlink loop") from None
        raise bad(f"{value!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_IMAGE_BYTES:  # it grew since stat()
        raise bad(_too_big(value, len(data)))
    mime = next((m for magic, m in IMAGE_MAGIC.items() if data.startswith(magic)), None)
    if mime is None:
        raise bad(f"{value!r} is not a PNG or JPEG file")
    digest = hashlib.sha256(data).hexdigest()
    return ImageInput(shown, digest, mime, len(data))


def _too_big(value: str, size: int) -> str:
    limit = MAX_IMAGE_BYTES // 1048576
    return f"{value!r} is {size / 1048576:.1f} MiB; the API accepts at most {limit} MiB"
