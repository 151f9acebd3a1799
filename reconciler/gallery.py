"""``reconcile gallery``: one static page to review a batch of videos side by side.

Why a page: reviewing generations one file at a time does not scale, and a reviewer needs each
video beside what it asked for (prompt, model, resolution, length), what it cost and, for the
specs without a video, why not. Why static: it has to open from a checkout, from a CI artifact or
from an attachment, with no server and no network, so the page inlines its CSS and its one small
script (the state filter), loads no font or CDN, and points at the videos by paths relative to
itself (``--copy-videos`` copies them in when the folder must stand alone).

Three steps, I/O at the edges: ``cards`` reads the state (never writes it) into plain ``Card``
records, ``render`` is a pure function from records to HTML text, and ``build`` decodes one real
frame of each video into a poster (PyAV; cached by the video's sha256, so a re-run is cheap) and
writes the folder.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from urllib.parse import quote

from . import lockfile
from .audit import status_rows
from .errors import ReconcileError
from .facts import DEFAULT_ASPECT_RATIO, EXTENSION_SECONDS
from .files import atomic_file, atomic_write_text, clone_or_copy
from .lifecycle import CHANGES, ActionKind
from .money import money
from .owners import now_iso
from .plan import estimate
from .spec import Desired
from .store import as_seen
from .workspace import STATE_DIR, Workspace

INDEX = "index.html"
POSTERS = "posters"
MEDIA = "media"  # --copy-videos puts copies here (never "videos": that may be the outputs' name)
POSTER_MAX = 640  # pixels on the longer side: sharp on a laptop's grid, about 20 KiB a JPEG
OURS = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[0-9a-f]{16}\.(?:jpg|mp4)\Z")  # what build may prune
# The order the filter offers states in: what a reviewer looks at first, then what needs work.
STATE_ORDER = (
    "materialized", "failed", "blocked", "unknown", "missing", "modified", "cached", "new",
    "pending", "submitting", "running", "succeeded",
)  # fmt: skip


@dataclass(frozen=True)
class Card:
    """One spec as the page shows it; ``video`` and ``poster`` are hrefs relative to the page."""

    name: str
    state: str  # status's state, or "blocked" where the plan holds back a spec with no video
    prompt: str
    model: str
    resolution: str
    aspect_ratio: str
    seconds: float | None  # the video's length (a chain: its source's plus the extension)
    cost: float | None  # the plan's estimate for one generation of it
    generated: str | None = None  # when the provider finished it (ISO, UTC)
    source: str | None = None  # a chain: the spec it extends
    source_uri: str | None = None  # an extension of a provider video: its URI
    reason: str | None = None  # why there is no (good) video, or what apply would do next
    file: str | None = None  # the spec file
    inputs: tuple[str, ...] = ()  # images sent with it, repo-relative
    sha256: str | None = None
    video: str | None = None
    poster: str | None = None


@dataclass(frozen=True)
class Page:
    """What ``build`` wrote: the index, its cards, and how many posters it had to decode."""

    index: Path
    cards: list[Card]
    decoded: int


# -- reading the state -------------------------------------------------------------------------


def cards(ws: Workspace, specs: list[Desired], *, invalid_files: bool = False) -> list[Card]:
    """One card per spec, from status's rows (the file is checked too) and the plan's view of
    what is held back; no video or poster hrefs yet (``build`` adds them)."""
    rows = {r["name"]: r for r in status_rows(ws, specs, invalid_files=invalid_files)}
    actions = {a.name: a for a in ws.plan(specs).actions}
    gens = as_seen(ws.gens)
    lock = lockfile.read(ws.lock_path)
    out = []
    for spec in sorted(specs, key=lambda s: s.name):
        row, action, gen = rows[spec.name], actions.get(spec.name), gens.get(spec.key)
        state, reason = str(row["state"]), row["error"]
        if action is not None and action.kind is ActionKind.BLOCKED:
            state = "blocked" if state in ("new", "pending") else state
            reason = reason or action.reason
        elif reason is None and action is not None and action.kind in CHANGES:
            reason = f"`reconcile apply` will {action.kind}: {action.reason}"
        entry = lock.get(spec.name)
        generated = gen.finished_at if gen and gen.finished_at else None
        if generated is None and entry is not None and entry.spec_key == spec.key:
            generated = entry.generated
        if not row["sha256"]:
            generated = None  # a failure's finishing time is not a generation's
        out.append(Card(
            name=spec.name, state=state, prompt=spec.prompt, model=spec.model,
            resolution=spec.resolution,
            aspect_ratio=str(spec.parameters.get("aspectRatio") or DEFAULT_ASPECT_RATIO),
            seconds=_length(spec),
            cost=estimate(ws.config, spec), generated=generated,
            source=spec.source, source_uri=spec.video_uri, reason=reason, file=spec.file,
            inputs=tuple(i.path for i in spec.images),
            sha256=row["sha256"] if state == "materialized" else None,
            video=row["path"] if state == "materialized" else None,
        ))  # fmt: skip
    return out


def _length(spec: Desired) -> float | None:
    """Seconds of the video: known for a chain of specs, not for an extension of a provider URI."""
    if spec.length is not None or spec.video_uri is not None:
        return spec.length
    return float(spec.duration)


# -- posters -----------------------------------------------------------------------------------


def poster_jpeg(video: Path, *, at: float | None = None, longest: int = POSTER_MAX) -> bytes:
    """A real frame of ``video`` as JPEG bytes: the first frame at or after ``at`` seconds (by
    default the middle), scaled to at most ``longest`` pixels on its longer side.

    Raises ``ValueError`` when the file has no decodable video (PyAV's errors are mapped here,
    once)."""
    import av  # the simulator's dependency too; imported here so the other commands never wait

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            length = float(container.duration or 0) / 1_000_000
            target = max(0.0, length / 2 if at is None else min(at, length))
            if target and stream.time_base:
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
            frame = None
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= target - 1e-3:
                    break
            if frame is None:
                raise ValueError(f"{video.name}: no video frame decodes")
            scale = min(1.0, longest / max(frame.width, frame.height))
            width, height = (max(2, int(d * scale) // 2 * 2) for d in (frame.width, frame.height))
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
            encoder.time_base = Fraction(1, 25)
            encoder.options = {"qmin": "2", "qmax": "6"}  # keep the test pattern's text crisp
            picture = frame.reformat(width=width, height=height, format="yuvj420p")
            picture.pts = 0
            packets = [*encoder.encode(picture), *encoder.encode(None)]
    except (av.FFmpegError, IndexError, StopIteration) as exc:
        raise ValueError(f"{video.name}: not a decodable video ({exc})") from None
    return b"".join(bytes(p) for p in packets)


def poster_time(card: Card) -> float | None:
    """Where the poster comes from: the middle of what this spec generated (an extension's own
    last seconds, not its source's), or the middle of the video (None)."""
    extension = card.source is not None or card.source_uri is not None
    if extension and card.seconds:
        return max(0.0, card.seconds - EXTENSION_SECONDS / 2)
    return None


# -- the page --------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(iso: str) -> str:
    """An ISO time as a reviewer reads it, in UTC (the state's times are UTC already)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _media(card: Card) -> str:
    if card.video is None:
        return f'<div class="media empty"><span>{_e(card.state)}: no video</span></div>'
    poster = f' poster="{_e(card.poster)}"' if card.poster else ""
    return (
        f'<div class="media"><video controls preload="metadata" playsinline{poster} '
        f'src="{_e(card.video)}"></video></div>'
    )


def _facts(card: Card, names: set[str]) -> str:
    rows: list[tuple[str, str]] = [
        ("model", _e(card.model)),
        ("resolution", f"{_e(card.resolution)}, {_e(card.aspect_ratio)}"),
        ("duration", "unknown" if card.seconds is None else f"{card.seconds:g} s"),
        ("cost", _e(money(card.cost) if card.cost is not None else "unpriced")),
    ]
    if card.generated:
        rows.append(("generated", f'<time datetime="{_e(card.generated)}">'
                     f"{_e(_when(card.generated))}</time>"))  # fmt: skip
    if card.source is not None:
        target = card.source
        link = f'<a class="source" href="#card-{_e(target)}">{_e(target)}</a>'
        rows.append(("extends", link if target in names else _e(target)))
    elif card.source_uri is not None:
        rows.append(("extends", f'<span class="uri">{_e(card.source_uri)}</span>'))
    if card.inputs:
        rows.append(("images", "<br>".join(_e(i) for i in card.inputs)))
    if card.file:
        rows.append(("spec", _e(card.file)))
    if card.video:
        label = f"{card.sha256[:16]}.mp4" if card.sha256 else "video"
        rows.append(("file", f'<a href="{_e(card.video)}">{_e(label)}</a>'))
    return "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)


def _card(card: Card, names: set[str]) -> str:
    reason = f'<p class="reason">{_e(card.reason)}</p>' if card.reason else ""
    return (
        f'<article class="card" id="card-{_e(card.name)}" data-name="{_e(card.name)}" '
        f'data-state="{_e(card.state)}">{_media(card)}<div class="body">'
        f'<h2><a href="#card-{_e(card.name)}">{_e(card.name)}</a> '
        f'<span class="state s-{_e(card.state)}">{_e(card.state)}</span></h2>'
        f'{reason}<p class="prompt">{_e(card.prompt)}</p><dl>{_facts(card, names)}</dl>'
        "</div></article>"
    )


def states_in(items: list[Card]) -> list[tuple[str, int]]:
    """The filter's choices: each state present, with its count, in ``STATE_ORDER``."""
    counts: dict[str, int] = {}
    for card in items:
        counts[card.state] = counts.get(card.state, 0) + 1
    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    return sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def render(items: list[Card], *, title: str, written: str, note: str | None = None) -> str:
    """The whole page as text: a pure function of the cards (tested as data)."""
    names = {c.name for c in items}
    buttons = [("all", len(items)), *states_in(items)]
    filters = "".join(
        f'<button type="button" data-filter="{_e(s)}" aria-pressed="{str(s == "all").lower()}">'
        f"{_e(s)} <span>{n}</span></button>"
        for s, n in buttons
    )
    playable = sum(1 for c in items if c.video)
    shown = sum(c.cost or 0.0 for c in items if c.video)
    summary = (
        f"{len(items)} spec{'s' if len(items) != 1 else ''}, {playable} with a video "
        f"({_e(money(shown))} of generations at list price). Written {_e(_when(written))}."
    )
    banner = f'<p class="note">{_e(note)}</p>' if note else ""
    body = "".join(_card(c, names) for c in items) or '<p class="none">No specs found.</p>'
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="reconcile gallery">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><header>"
        f'<h1>{_e(title)}</h1>{banner}<p class="summary">{summary}</p>'
        f'<nav class="filters" aria-label="Filter by state">{filters}</nav></header>\n'
        f'<main class="grid">{body}</main>\n<script>{SCRIPT}</script></body></html>\n'
    )


CSS = """
:root{color-scheme:light;--ink:#1d2228;--muted:#5b6570;--line:#dde2e7;--bg:#f4f6f8}
*{box-sizing:border-box}[hidden]{display:none!important}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
header{padding:20px 24px 8px}h1{margin:0 0 4px;font-size:22px}
.summary,.note{margin:4px 0;color:var(--muted)}
.note{color:#7a4b00;background:#fff4d6;border:1px solid #f0d48a;border-radius:6px;
padding:6px 10px;display:inline-block}
.filters{display:flex;flex-wrap:wrap;gap:6px;margin:12px 0 4px}
.filters button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:999px;
padding:4px 12px;cursor:pointer}
.filters button span{color:var(--muted)}
.filters button[aria-pressed=true]{background:var(--ink);color:#fff;border-color:var(--ink)}
.filters button[aria-pressed=true] span{color:#cfd6dd}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:18px;
padding:12px 24px 32px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;overflow:hidden;
display:flex;flex-direction:column;scroll-margin-top:12px}
.card:target{outline:3px solid #3b82f6}
.media{position:relative;aspect-ratio:16/9;background:#101418;display:flex;align-items:center;
justify-content:center}
.media video{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
.media.empty span{color:#9aa5b1;font-size:14px}
.body{padding:12px 14px 14px}
h2{margin:0 0 6px;font-size:17px;display:flex;align-items:center;gap:8px;flex-wrap:wrap}
h2 a{color:inherit;text-decoration:none}
.state{font-size:12px;font-weight:600;border-radius:4px;padding:1px 7px;background:#e8ecf0}
.s-materialized{background:#dcf5e3;color:#14632f}
.s-failed,.s-unknown,.s-modified,.s-missing{background:#fde2e1;color:#8c1d18}
.s-blocked{background:#fdebd3;color:#7a4100}
.prompt{margin:0 0 10px;white-space:pre-line}
.reason{margin:0 0 8px;padding:6px 9px;border-left:3px solid #8a96a3;background:#f1f4f7;
font-size:14px}
[data-state=failed] .reason,[data-state=unknown] .reason,[data-state=missing] .reason,
[data-state=modified] .reason{border-color:#d9534f;background:#fdf3f2}
[data-state=blocked] .reason{border-color:#e0a040;background:#fff7ea}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0;font-size:13px}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
.uri{font-family:ui-monospace,monospace;font-size:12px}
"""

# The filter: without JavaScript every card shows. A link to a hidden card (a chain's source)
# shows every card again.
SCRIPT = """
(function(){
var buttons=document.querySelectorAll('[data-filter]'),cards=document.querySelectorAll('.card');
function show(state){
buttons.forEach(function(b){b.setAttribute('aria-pressed',String(b.dataset.filter===state));});
cards.forEach(function(c){c.hidden=state!=='all'&&c.dataset.state!==state;});
}
buttons.forEach(function(b){b.addEventListener('click',function(){show(b.dataset.filter);});});
window.addEventListener('hashchange',function(){
var t=document.getElementById(location.hash.slice(1));if(t&&t.hidden){show('all');t.scrollIntoView();}
});
})();
"""


# -- writing the folder --------------------------------------------------------------------------


def default_out(ws: Workspace) -> Path:
    """state/gallery (state/sim/gallery for --sim): derived, machine-local, never committed."""
    return ws.repo / STATE_DIR / ("sim/gallery" if ws.sandbox else "gallery")


def href(target: Path, page_dir: Path) -> str:
    """A URL for ``target`` relative to the page, so the page works wherever the tree is opened."""
    try:
        rel = os.path.relpath(target, page_dir)
    except ValueError:  # another drive (Windows): only an absolute URL reaches it
        return target.resolve().as_uri()
    return quote(rel.replace(os.sep, "/"))


def build(
    ws: Workspace,
    specs: list[Desired],
    *,
    out: Path | None = None,
    copy_videos: bool = False,
    invalid_files: bool = False,
) -> Page:
    """Write ``out/index.html`` with its posters (and, with ``copy_videos``, the videos) beside
    it. Reads the state and the videos; writes nothing outside ``out``."""
    out = (out or default_out(ws)).resolve()
    _check_out(ws, out)
    keep: set[Path] = set()
    placed = [_place(ws, c, out, keep, copy_videos=copy_videos)
              for c in cards(ws, specs, invalid_files=invalid_files)]  # fmt: skip
    _prune(out, keep)
    sandbox = f"Simulator sandbox ({STATE_DIR}/sim): simulated videos, never paid for."
    text = render(
        [c for c, _ in placed], title=f"{ws.repo.name}: videos in {ws.config.output_dir}",
        written=now_iso(), note=sandbox if ws.sandbox else None,
    )  # fmt: skip
    index = out / INDEX
    atomic_write_text(index, text)
    if out == default_out(ws).resolve() and not (out / ".gitignore").exists():
        atomic_write_text(out / ".gitignore", "# reconcile gallery's output: never commit it\n*\n")
    return Page(index, [c for c, _ in placed], sum(new for _, new in placed))


def _place(
    ws: Workspace, card: Card, out: Path, keep: set[Path], *, copy_videos: bool
) -> tuple[Card, bool]:
    """A card with its hrefs, its poster decoded unless cached (and whether it was), and its
    video copied with ``copy_videos``; every file it uses goes into ``keep``."""
    if card.video is None or card.sha256 is None:
        return card, False
    stem = f"{card.name}.{card.sha256[:16]}"
    video = ws.repo / card.video
    if copy_videos:
        copy = out / MEDIA / f"{stem}.mp4"
        if not copy.exists() or copy.stat().st_size != video.stat().st_size:
            with atomic_file(copy) as fh, video.open("rb") as src:
                clone_or_copy(src, fh)
        keep.add(copy)
        video = copy
    card = replace(card, video=href(video, out))
    poster = out / POSTERS / f"{stem}.jpg"  # the sha names the bytes: a poster never goes stale
    decoded = False
    if not poster.is_file() or poster.stat().st_size == 0:
        try:
            data = poster_jpeg(video, at=poster_time(card))
        except ValueError as exc:
            why = f"no poster: {exc}"
            return replace(card, reason=f"{card.reason}; {why}" if card.reason else why), False
        with atomic_file(poster) as fh:
            fh.write(data)
        decoded = True
    keep.add(poster)
    return replace(card, poster=href(poster, out)), decoded


def _check_out(ws: Workspace, out: Path) -> None:
    """The gallery needs a folder of its own: pruning old posters must never touch the repo."""
    for folder, what in (
        (ws.repo, "the repo itself"),
        (ws.repo / "specs", "specs/"),
        (ws.repo / ws.config.output_dir, "the output folder"),
        (ws.cache.root, "the object cache"),
    ):
        if out == folder.resolve() or (what != "the repo itself" and out.is_relative_to(folder)):
            raise ReconcileError(
                f"--out {out}: that is {what}; give the gallery a folder of its own"
            )


def _prune(out: Path, keep: set[Path]) -> None:
    """Delete this command's earlier posters and copies that no card uses any more."""
    for sub in (POSTERS, MEDIA):
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if OURS.match(path.name) and path not in keep and path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
