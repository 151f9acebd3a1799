"""Loading specs: every file under ``specs/``, validated, with defaults merged and images read.

``spec`` says what a valid spec is and what its key is; this module does the I/O around it: walking
the folder, reading YAML, merging ``reconcile.yaml``'s defaults, reading and checking image files,
and catching a name defined twice. It never raises for user input but collects every problem, with
file, line and field, so ``validate`` can show them all at once and ``watch`` can keep a file's
last good specs while only that file is broken.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import chains, failpoints, fanout
from .config import CONFIG_FILE, Config
from .errors import Problem, SpecErrors
from .facts import DEFAULT_DURATION, IMAGE_MAGIC, MAX_IMAGE_BYTES, MODELS
from .files import Stat, signature, stat_of
from .index import NO_STAT, SpecIndex
from .index import _entry as entry_of  # the index file's plain form: what a child sends back
from .index import _raw as raw_entry
from .spec import (
    FORBIDDEN_DEFAULTS,
    KNOWN_KEYS,
    SPEC_FIELDS,
    Desired,
    ImageInput,
    PlainDoc,
    Reference,
    plain_doc,
    rule_problems,
    spec_key,
)
from .walk import spec_files
from .yamlio import Document, load_documents, pydantic_problems, show

if TYPE_CHECKING:
    from .specdoc import SpecDoc

FORK_AT = 500  # files to parse before a cold load forks a child per core (~10 ms each)


@dataclass
class LoadResult:
    """Everything found under specs/: valid specs, and problems per file (for watch's partial reloads)."""

    specs: list[Desired] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # spec file -> names it defines
    bad_files: set[str] = field(default_factory=set)
    parsed: int = 0  # files read and parsed this time (the others came from the spec index)
    processes: int = 1  # processes that parsed them (forked children that came back, and this)
    index: SpecIndex | None = None  # the index used (watch keeps it between loads)
    chained: bool = False  # some spec extends another (an edit may move keys in other files)
    swapped: dict[str, Desired] | None = None  # watch, after an edit: the only specs re-read

    def raise_for_problems(self) -> None:
        """For commands that stop on any invalid spec, before anything is paid for."""
        if self.problems:
            raise SpecErrors(self.problems)


@fanout.gc_paused()
def load_specs(
    repo: Path,
    config: Config,
    *,
    index: SpecIndex | None = None,
    changed: set[str] | None = None,
    workers: int | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> LoadResult:
    """Load and validate every spec; never raises for user input, collects problems instead.

    Files whose stat (and whose images' stats) match the spec index are taken from it unread;
    the others are parsed and the index refreshed (see ``index``). ``watch`` keeps its own
    ``index`` in memory and names the spec files an event ``changed``: only those are looked
    at, every other file is taken as last loaded (its periodic full load checks them all).
    ``workers``: processes parsing (None: every core for a cold load of many files, where the
    process has no thread; one with a resident index: ``watch`` runs threads). ``meanwhile``:
    the caller's work that needs no spec (a plan's modules, its state), run once, while forked
    children parse (before the parse when none do).
    """
    repo = repo.resolve()
    result = LoadResult()
    default_problems = check_defaults(config)
    result.problems.extend(default_problems)
    # A bad default is reported once, against reconcile.yaml, not again in every spec using it.
    reported = frozenset(
        p.field.split(".")[1] for p in default_problems if p.field and p.field.count(".") >= 1
    )
    resident = index is not None
    stamp = SpecIndex.stamp_of(config.defaults, config.models, config.lines)
    if index is None or index.stamp != stamp:
        index = SpecIndex.open(repo, stamp) if index is None else index.restart(stamp)
        changed = None
    # No stat: a file no event named, as the index holds it (or, holding none, not yet read).
    found = [
        (rel, index.entries.get(rel) if sig is None else index.lookup(rel, sig), sig)
        for rel, sig in spec_files(repo, index, changed, result.problems)
    ]
    missing = [(rel, sig) for rel, entry, sig in found if entry is None]
    workers = 1 if resident else workers
    result.processes = _parse(missing, repo, config, reported, index, workers, meanwhile)
    result.parsed = len(missing)
    seen: dict[str, Desired] = {}  # name -> the spec defining it first
    entries, files, kept = index.entries, result.files, result.specs  # 10,000 times: no lookups
    for rel, known, _ in found:
        entry = entries[rel] if known is None else known
        specs, problems = entry.specs, entry.problems
        problems = list(problems) if problems else []
        files[rel] = [s.name for s in specs]
        for spec in specs:
            if (first := seen.setdefault(spec.name, spec)) is not spec:
                where = f"{first.file}:{first.line}"
                message = f"duplicate name {spec.name!r}: already defined in {where}"
                problems.append(Problem(rel, message, line=spec.line, field="name"))
            else:
                kept.append(spec)
        if problems:
            result.bad_files.add(rel)
            result.problems.extend(problems)
    index.prune({rel for rel, _, _ in found})
    result.index = index
    if changed is None or not resident:
        index.save()  # after an event, watch's index is saved by its next full load
    # Chains last: a child's key includes its source's, wherever in specs/ that is defined.
    result.specs, problems = chains.resolve(result.specs)
    result.chained = any(s.source is not None for s in result.specs) or bool(problems)
    for problem in problems:
        result.bad_files.add(problem.file)
        result.problems.append(problem)
    return result


def _parse(
    missing: list[tuple[str, Stat | None]],
    repo: Path,
    config: Config,
    reported: frozenset[str],
    index: SpecIndex,
    workers: int | None,
    meanwhile: Callable[[], object] | None,
) -> int:
    """Parse the files the index lacks into it, on every core when there are many of them.
    Returns how many processes did (children that failed had their part parsed here)."""

    def work(part: Sequence[tuple[str, Stat | None]], forked: bool) -> Any:
        if forked:
            failpoints.hit("parse_child")
        for rel, sig in part:
            path = f"{repo}/{rel}"
            sig = sig or stat_of(path) or NO_STAT  # not stat'ed by the walk: here, before reading
            specs, problems = load_file(path, repo, config, reported=reported, index=index, rel=rel)
            index.store(rel, sig, specs, problems)
        if not forked:
            return None
        entries = [(rel, index.entries[rel]) for rel, _ in part]  # as the index file holds them
        hashes = {t: index.hashes[t] for _, e in entries for t in e.targets if t in index.hashes}
        return [(rel, raw_entry(e)) for rel, e in entries], hashes

    parts = min(workers or (fanout.cores() if len(missing) >= FORK_AT else 1), len(missing))
    if parts < 2 or not fanout.can_fork():
        if meanwhile is not None:
            meanwhile()
        work(missing, False)
        return 1
    processes = 1
    # Equal parts: this process also walks and merges, but a child pays copy-on-write faults and
    # packs its result (with 0.9 here, this process waited 0.08-0.2 s for the child; 0.02-0.08).
    for result in fanout.run(missing, work, parts=parts, meanwhile=meanwhile):
        if result is not None:  # None: that child failed and its part was parsed here
            raws, hashes = result
            index.entries.update((rel, entry_of(raw)) for rel, raw in raws)
            index.hashes.update(hashes)
            index.dirty = True
            processes += 1
    return processes


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
    doc = Document(usable, top or 1, lines={k: v for k, v in lines.items() if v is not None})
    parsed: PlainDoc | SpecDoc | None = plain_doc(probe)
    if parsed is None:
        from .specdoc import SpecDoc, ValidationError

        try:
            parsed = SpecDoc.model_validate(probe)
        except ValidationError as exc:
            for p in pydantic_problems(exc, CONFIG_FILE, doc, known=SPEC_FIELDS):
                if p.field is not None and p.field.split(".")[0] in usable:
                    problems.append(replace(p, field=f"defaults.{p.field}"))
            return problems
    model = config.models.get(parsed.model) if "model" in usable else None
    if "model" in usable and model is None:
        where = lines.get("model", top)
        message = unknown_model(parsed.model, config)
        problems.append(Problem(CONFIG_FILE, message, line=where, field="defaults.model"))
    for name, message in rule_problems(parsed, model):
        where = lines.get(name, top)
        problems.append(Problem(CONFIG_FILE, message, line=where, field=f"defaults.{name}"))
    return problems


def unknown_model(model: str, config: Config) -> str:
    """An id the catalog lacks: the ids it has, and how to declare another."""
    known = ", ".join(sorted(config.models))
    return (
        f"unknown model {model!r}; known: {known}. Declare the id your provider serves under "
        f"`models:` in {CONFIG_FILE} (price, resolutions, features)"
    )


def _unknown_key(key: str) -> str:
    """A default's typo gets the same "did you mean" as a spec's."""
    guess = difflib.get_close_matches(key, SPEC_FIELDS, n=1, cutoff=0.6)
    return "unknown key" + (f"; did you mean '{guess[0]}'?" if guess else "")


def load_file(
    path: Path | str,
    repo: Path,
    config: Config,
    *,
    reported: frozenset[str] = frozenset(),
    index: SpecIndex | None = None,
    rel: str | None = None,
) -> tuple[list[Desired], list[Problem]]:
    """Validate one spec file: all of its documents, each error with file, line and field.

    ``reported`` names defaults already reported as invalid: a spec inheriting one is skipped
    without repeating the error. ``rel``, the path relative to ``repo`` when the caller has it,
    spares ``path`` being a Path (a measurable part of a cold load of many small files).
    """
    if rel is None:
        rel = Path(path).relative_to(repo).as_posix()
    docs, problems = load_documents(path, rel)
    if problems:
        return [], problems
    if not docs:
        return [], [Problem(rel, "holds no spec: the file is empty (or only comments)")]
    specs = []
    for doc in docs:
        try:
            specs.append(_desired(doc, path, rel, repo, config, reported, index))
        except SpecErrors as exc:
            problems.extend(exc.problems)
    return specs, problems


def _desired(
    doc: Document,
    path: Path | str,
    rel: str,
    repo: Path,
    config: Config,
    reported: frozenset[str],
    index: SpecIndex | None = None,
) -> Desired:
    """One document as a keyed Desired, or SpecErrors: the image is read only once the rest holds."""
    if not isinstance(doc.data, dict):
        kind = _kind(doc.data)
        message = f"a spec must be a mapping of keys (name: …, model: …, prompt: …), not {kind}"
        raise SpecErrors([Problem(rel, message, line=doc.line)])
    merged = {k: v for k, v in config.defaults.items() if k not in FORBIDDEN_DEFAULTS}
    merged.update(doc.data)
    inherited = [k for k in config.defaults if k not in doc.data]
    skip = reported.intersection(inherited)
    parsed: PlainDoc | SpecDoc | None = plain_doc(merged)
    if parsed is None:  # not plainly valid: pydantic says, with its errors (imported only now)
        from .specdoc import SpecDoc, ValidationError

        try:
            parsed = SpecDoc.model_validate(merged)
        except ValidationError as exc:
            problems = pydantic_problems(exc, rel, doc, known=KNOWN_KEYS)
            raise SpecErrors(
                [p for p in problems if not (p.field and p.field.split(".")[0] in skip)]
            ) from None
    model = config.models.get(parsed.model)
    if model is None:
        if "model" in skip:
            raise SpecErrors([])  # the default is wrong, and was said once against reconcile.yaml
        message = unknown_model(parsed.model, config)
        raise SpecErrors([Problem(rel, message, line=doc.line_of("model"), field="model")])
    rules = rule_problems(parsed, model)
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
    image = last_frame = None
    if parsed.image is not None:
        image = _image(parsed.image, path, rel, repo, doc.line_of("image"), index=index)
    if parsed.lastFrame is not None:
        last_frame = _image(
            parsed.lastFrame, path, rel, repo, doc.line_of("lastFrame"), "lastFrame", index
        )
    references = tuple(
        Reference(
            _image(ref if isinstance(ref, str) else ref.image, path, rel, repo,
                   doc.line_at(["referenceImages", at]), f"referenceImages.{at}", index),
            "asset" if isinstance(ref, str) else ref.referenceType,
        )
        for at, ref in enumerate(parsed.referenceImages or [])
    )  # fmt: skip
    params = {
        "aspectRatio": parsed.aspectRatio,
        "resolution": parsed.resolution,
        "durationSeconds": parsed.durationSeconds or DEFAULT_DURATION,
        "enhancePrompt": parsed.enhancePrompt,
        "personGeneration": parsed.personGeneration,
        # A blank negative prompt is no negative prompt: same key, and nothing sent.
        "negativePrompt": (parsed.negativePrompt or "").strip() or None,
        "seed": parsed.seed,
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
        last_frame=last_frame,
        references=references,
        source=parsed.video.from_ if parsed.video else None,
        take=parsed.take,
        length=float(parsed.durationSeconds or DEFAULT_DURATION) if parsed.video is None else None,
    )
    # An extension of another spec is keyed once its chain is resolved (chains.resolve).
    # Keyed in place: the object is new and nobody else holds it (a copy per spec is measurable).
    object.__setattr__(desired, "key", spec_key(desired))
    return desired


def _kind(data: Any) -> str:
    """What a document that is not a mapping is, in YAML's words rather than Python's."""
    if isinstance(data, list):
        return "a list"
    if isinstance(data, bool):
        return f"the boolean {show(data)}"
    if isinstance(data, int | float):
        return f"the number {show(data)}"
    return f"the text {show(data)}"


def _image(
    value: str,
    spec_path: Path | str,
    rel: str,
    repo: Path,
    line: int,
    field: str = "image",
    index: SpecIndex | None = None,
) -> ImageInput:
    """Read and identify an image (first or last frame, a reference); only files inside the repo,
    so a spec cannot send any other file on the machine to the API."""

    def bad(message: str) -> SpecErrors:
        return SpecErrors([Problem(rel, message, line=line, field=field)])

    if "\0" in value:
        raise bad(f"{value!r} is not a usable path (it holds a NUL character)")
    written = Path(spec_path).parent / value
    if index is not None:
        index.missing_image(str(written))  # replaced by its stat once found
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
        st = target.stat()
        if st.st_size > MAX_IMAGE_BYTES:
            raise bad(_too_big(value, st.st_size))
        if index is not None:
            known = index.image(str(written), str(target), signature(st))
            if known is not None:
                return ImageInput(shown, *known)
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
    if index is not None and len(data) == st.st_size:
        index.hashed(str(target), signature(st), digest, mime, len(data))
    return ImageInput(shown, digest, mime, len(data))


def _too_big(value: str, size: int) -> str:
    limit = MAX_IMAGE_BYTES // 1048576
    return f"{value!r} is {size / 1048576:.1f} MiB; the API accepts at most {limit} MiB"
