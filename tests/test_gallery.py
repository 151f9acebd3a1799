"""`reconcile gallery`: the page as data, its posters as real frames, and the page in a real browser.

The browser tests drive Debian's headless Chromium over the DevTools protocol (a websocket, no
driver in between): the page opens from disk with no console errors, every video loads, decodes
and plays, the state filter works, and a screenshot is saved (build/gallery-screenshot.png).
Without Chromium they skip, unless RECONCILE_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import API_KEY, ROOT, Repo

from reconciler import sim as simmod
from reconciler.gallery import Card, href, poster_jpeg, poster_time, render, states_in
from reconciler.index import INDEX_FILE
from reconciler.sim import Simulator

FAST = "veo-3.1-fast-generate-preview"
FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}
SCREENSHOT = ROOT / "build" / "gallery-screenshot.png"


# -- the page as data ----------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
            ):
                found.append(child)
            found.extend(child.all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]

    @property
    def all_text(self) -> str:
        return self.text + "".join(c.all_text for c in self.children)


class _Tree(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "source", "input", "link"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Node("#text", {}, text=data))


def parse(text: str) -> Node:
    tree = _Tree()
    tree.feed(text)
    tree.close()
    assert [n.tag for n in tree.stack] == ["#document"], "unclosed elements"
    return tree.root


def card(name: str, **kw: Any) -> Card:
    base: dict[str, Any] = dict(
        state="materialized", prompt=f"{name} prompt", model=FAST, resolution="720p",
        aspect_ratio="16:9", seconds=8.0, cost=0.8, generated="2026-11-02T10:20:30Z",
        file=f"specs/{name}.yaml", sha256="ab" * 32, video=f"../../videos/{name}.{'ab' * 8}.mp4",
        poster=f"posters/{name}.{'ab' * 8}.jpg",
    )  # fmt: skip
    base.update(kw)
    return Card(name=name, **base)


NO_VIDEO = {"sha256": None, "video": None, "poster": None, "generated": None}
CARDS = [
    card("hero"),
    card("hero-extended", source="hero", seconds=15.0, cost=0.7),
    card("bad", state="failed", reason="Content policy violation: <b>blocked</b>", **NO_VIDEO),
    card("child", state="blocked", source="bad", reason="its source `bad` is failed", **NO_VIDEO),
    card("later", state="new", reason="`reconcile apply` will create: new spec", **NO_VIDEO),
]


def page(items: list[Card] = CARDS, **kw: Any) -> Node:
    return parse(render(items, title="assets: videos", written="2026-11-02T11:00:00Z", **kw))


def test_one_card_per_spec_with_its_state_and_facts() -> None:
    """Every card carries its name, state, prompt, model, resolution, length, cost and time."""
    doc = page()
    cards = doc.all("article")
    assert [(c.attrs["data-name"], c.attrs["data-state"]) for c in cards] == [
        ("hero", "materialized"), ("hero-extended", "materialized"), ("bad", "failed"),
        ("child", "blocked"), ("later", "new"),
    ]  # fmt: skip
    hero = doc.one("article", data_name="hero")
    facts = dict(
        zip([d.all_text for d in hero.all("dt")], [d.all_text for d in hero.all("dd")], strict=True)
    )
    assert facts["model"] == FAST and facts["resolution"] == "720p, 16:9"
    assert facts["duration"] == "8 s" and facts["cost"] == "$0.80"
    assert facts["generated"] == "2026-11-02 10:20 UTC" and facts["spec"] == "specs/hero.yaml"
    assert hero.one("p", **{"class": "prompt"}).all_text == "hero prompt"
    assert hero.one("time").attrs["datetime"] == "2026-11-02T10:20:30Z"


def test_a_materialized_card_has_a_player_with_its_poster_by_relative_paths() -> None:
    """The player loads metadata only, shows the poster, and points at the video relatively."""
    video = page().one("article", data_name="hero").one("video")
    assert video.attrs["src"] == f"../../videos/hero.{'ab' * 8}.mp4"
    assert video.attrs["poster"] == f"posters/hero.{'ab' * 8}.jpg"
    assert video.attrs["preload"] == "metadata" and "controls" in video.attrs


def test_failed_and_blocked_cards_say_why_and_have_no_player() -> None:
    """A spec without a video shows its reason where the player would be."""
    doc = page()
    for name, words in [("bad", "Content policy violation: <b>blocked</b>"),
                        ("child", "its source `bad` is failed"),
                        ("later", "will create: new spec")]:  # fmt: skip
        article = doc.one("article", data_name=name)
        assert article.all("video") == []
        assert words in article.one("p", **{"class": "reason"}).all_text
    assert doc.one("article", data_name="hero").all("p", **{"class": "reason"}) == []


def test_a_chain_links_to_its_sources_card() -> None:
    """An extension names its source and links to the source's card on the same page."""
    doc = page()
    link = doc.one("article", data_name="hero-extended").one("a", **{"class": "source"})
    assert link.attrs["href"] == "#card-hero" and link.all_text == "hero"
    assert doc.one("article", id="card-hero")
    # A source that is not on the page is named, not linked.
    alone = page([card("orphan-child", source="gone")])
    assert alone.all("a", **{"class": "source"}) == []
    assert "gone" in alone.one("article").all_text


def test_the_filter_offers_each_state_present_with_its_count() -> None:
    """One button per state present (in review order) plus all; all starts pressed."""
    buttons = page().one("nav").all("button")
    assert [(b.attrs["data-filter"], b.all_text) for b in buttons] == [
        ("all", "all 5"), ("materialized", "materialized 2"), ("failed", "failed 1"),
        ("blocked", "blocked 1"), ("new", "new 1"),
    ]  # fmt: skip
    assert [b.attrs["aria-pressed"] for b in buttons] == ["true"] + ["false"] * 4
    assert states_in([card("x", state="weird"), card("y")]) == [("materialized", 1), ("weird", 1)]


def test_user_text_is_escaped_everywhere() -> None:
    """Prompts, reasons and paths are text: no markup of theirs reaches the page."""
    evil = '</p><script>alert("x")</script><img src=x onerror=alert(1)> & "q" \'s'
    text = render(
        [card("hero", prompt=evil, reason=evil, file='specs/"x".yaml', model=evil)],
        title=evil, written="2026-11-02T11:00:00Z", note=evil,
    )  # fmt: skip
    doc = parse(text)
    assert len(doc.all("script")) == 1 and doc.all("img") == []
    assert doc.one("p", **{"class": "prompt"}).all_text == evil
    assert doc.one("title").all_text == evil
    assert "<script>alert" not in text and "onerror=alert(1)>" not in text


def test_the_page_is_self_contained() -> None:
    """No external script, style sheet, font or URL: it opens from disk and from an artifact."""
    text = render(CARDS, title="t", written="2026-11-02T11:00:00Z")
    doc = parse(text)
    assert doc.all("link") == [] and all("src" not in s.attrs for s in doc.all("script"))
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert "url(" not in text


@pytest.mark.parametrize(
    ("target", "page_dir", "expected"),
    [
        ("repo/videos/a.0123.mp4", "repo/state/gallery", "../../videos/a.0123.mp4"),
        ("repo/state/sim/videos/a.mp4", "repo/state/sim/gallery", "../videos/a.mp4"),
        ("repo/videos/a.mp4", "elsewhere/out", "../../repo/videos/a.mp4"),
        ("my repo/videos/a#1.mp4", "my repo/out", "../videos/a%231.mp4"),
        ("repo/out/media/a.mp4", "repo/out", "media/a.mp4"),
    ],
    ids=["default", "sandbox", "outside-the-repo", "quoted", "copied"],
)
def test_hrefs_are_relative_to_the_page(
    tmp_path: Path, target: str, page_dir: str, expected: str
) -> None:
    """Videos and posters are linked relative to index.html, URL-quoted."""
    assert href(tmp_path / target, tmp_path / page_dir) == expected


@pytest.mark.parametrize(
    ("iso", "shown"),
    [
        ("2026-11-02T10:20:30Z", "2026-11-02 10:20 UTC"),
        ("2026-11-02T12:20:30+02:00", "2026-11-02 10:20 UTC"),
        ("yesterday", "yesterday"),
    ],
)
def test_generated_times_read_in_utc(iso: str, shown: str) -> None:
    """The time a video was generated shows in UTC; a time that does not parse shows as is."""
    doc = page([card("hero", generated=iso)])
    assert doc.one("time").all_text == shown and doc.one("time").attrs["datetime"] == iso


def test_an_extensions_poster_comes_from_what_it_generated() -> None:
    """An extension's poster is from its own last seconds, not from its source's part."""
    assert poster_time(card("hero")) is None
    assert poster_time(card("ext", source="hero", seconds=15.0)) == 11.5
    assert poster_time(card("ext", source_uri="https://x/v.mp4", seconds=None)) is None


# -- posters are real frames ---------------------------------------------------------------------


def clip(path: Path, width: int, height: int, lumas: list[int], fps: int = 12) -> Path:
    """An H.264 clip of grey seconds: second i is all luma ``lumas[i]``."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for second, luma in enumerate(lumas):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, value in zip(frame.planes, (luma, 128, 128), strict=True):
                memoryview(plane)[:] = bytes([value]) * plane.buffer_size
            for i in range(fps):
                frame.pts = second * fps + i
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def decode_jpeg(data: bytes, tmp_path: Path) -> tuple[int, int, int]:
    """Width, height and the centre pixel's luma of a JPEG, decoded by PyAV."""
    path = tmp_path / "poster.jpg"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        luma = frame.reformat(format="gray")
        plane = luma.planes[0]
        centre = bytes(plane)[(frame.height // 2) * plane.line_size + frame.width // 2]
        return frame.width, frame.height, centre


@pytest.mark.parametrize(
    ("size", "at", "expected_size", "luma"),
    [
        ((800, 450), None, (640, 360), 120),  # the middle of 3 s: second 1
        ((800, 450), 2.5, (640, 360), 220),
        ((450, 800), 0.0, (360, 640), 30),  # vertical: the longer side is the height
        ((320, 180), None, (320, 180), 120),  # never scaled up
    ],
    ids=["middle", "at-2.5s", "vertical-first", "small"],
)
def test_a_poster_is_a_real_frame_of_the_video(
    tmp_path: Path, size: tuple[int, int], at: float | None, expected_size: tuple[int, int],
    luma: int,
) -> None:  # fmt: skip
    """The poster is the frame at the asked time (its luma proves which), scaled to 640 at most."""
    video = clip(tmp_path / "clip.mp4", *size, lumas=[30, 120, 220])
    data = poster_jpeg(video, at=at)
    assert data[:2] == b"\xff\xd8"
    width, height, centre = decode_jpeg(data, tmp_path)
    assert (width, height) == expected_size
    full_range = (luma - 16) * 255 / 219  # the clip is video range, a JPEG full range
    assert abs(centre - full_range) <= 6, centre


def test_a_file_that_does_not_decode_has_no_poster(tmp_path: Path) -> None:
    """A stand-in or damaged file raises ValueError (the page then says why), never PyAV's own."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(ValueError, match="not a decodable video"):
        poster_jpeg(bad)


# -- the command, on a real state ----------------------------------------------------------------


def failing_repo(repo: Repo, sim: Simulator) -> Repo:
    """calm materialized, base refused by content policy, mid blocked on it, later new."""
    repo.write("specs/calm.yaml", f"name: calm\nmodel: {FAST}\nprompt: A calm lake.\n")
    repo.write("specs/base.yaml", f"name: base\nmodel: {FAST}\nprompt: A forest <at> dusk.\n")
    repo.write(
        "specs/mid.yaml", f"name: mid\nmodel: {FAST}\nprompt: Rising.\nvideo: {{from: base}}\n"
    )
    sim.inject("submit", simmod.content_policy(), prompt_contains="forest")
    assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 1
    repo.write("specs/later.yaml", f"name: later\nmodel: {FAST}\nprompt: Not yet.\n")
    return repo


def state_files(repo: Repo) -> dict[str, bytes]:
    """Every file of the state (the db, the cache, the lock), not the gallery nor the spec index:
    a cache of parsed spec files that any command may refresh (as `git status` refreshes git's)."""
    return {
        str(p.relative_to(repo.path)): p.read_bytes()
        for p in sorted((repo.path / "state").rglob("*"))
        if p.is_file() and "gallery" not in p.parts and p.name != INDEX_FILE
    }


@pytest.mark.slow
def test_gallery_reads_the_state_and_writes_only_its_folder(repo: Repo, sim: Simulator) -> None:
    """Failed, blocked and new specs appear with their reasons; a stand-in video (which does not
    decode) gets a card without a poster, saying so; the state is left as it was."""
    failing_repo(repo, sim)
    before = state_files(repo)
    result = repo.run("gallery")
    assert result.returncode == 0, result.stderr
    index = repo.path / "state" / "gallery" / "index.html"
    assert index.as_uri() in result.stdout and "4 cards, 1 with a video" in result.stdout
    assert state_files(repo) == before
    doc = parse(index.read_text())
    states = {a.attrs["data-name"]: a.attrs["data-state"] for a in doc.all("article")}
    assert states == {"base": "failed", "calm": "materialized", "later": "new", "mid": "blocked"}
    reason = {a.attrs["data-name"]: a.all("p", **{"class": "reason"}) for a in doc.all("article")}
    assert "Content policy violation" in reason["base"][0].all_text
    assert "its source `base` is blocked: refused by content policy" in reason["mid"][0].all_text
    assert "will create" in reason["later"][0].all_text
    assert "no poster" in reason["calm"][0].all_text  # the fixture's simulator serves stand-ins
    calm = doc.one("article", data_name="calm").one("video")
    assert calm.attrs["src"].startswith("../../videos/calm.") and "poster" not in calm.attrs
    assert (index.parent / ".gitignore").read_text().endswith("*\n")


@pytest.mark.slow
def test_posters_are_cached_by_sha_and_stale_ones_pruned(tmp_path: Path) -> None:
    """A second run decodes nothing; posters of videos no longer shown go, other files stay;
    --copy-videos makes the folder stand alone."""
    with Simulator(api_key=API_KEY, latency=0.2) as sim:  # real, decodable clips
        repo = Repo(tmp_path / "assets-repo", sim)
        repo.write("specs/calm.yaml", f"name: calm\nmodel: {FAST}\nprompt: A calm lake.\n")
        assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 0
    out = tmp_path / "artifact"
    (out / "posters").mkdir(parents=True)
    (out / "posters" / "gone.0123456789abcdef.jpg").write_bytes(b"old")
    (out / "posters" / "notes.txt").write_text("mine")
    first = repo.run("gallery", "--out", str(out), "--copy-videos")
    assert first.returncode == 0 and "(posters: 1 decoded, 0 reused)" in first.stdout, first.stderr
    assert sorted(p.name for p in (out / "posters").iterdir())[1:] == ["notes.txt"]
    [poster] = (out / "posters").glob("calm.*.jpg")
    stamp = poster.stat().st_mtime_ns
    second = repo.run("gallery", "--out", str(out), "--copy-videos")
    assert "(posters: 0 decoded, 1 reused)" in second.stdout and poster.stat().st_mtime_ns == stamp
    video = parse((out / "index.html").read_text()).one("video")
    assert video.attrs["src"] == f"media/{poster.stem}.mp4"
    assert video.attrs["poster"] == f"posters/{poster.name}"
    assert (out / "media" / f"{poster.stem}.mp4").read_bytes() == next(
        (repo.path / "videos").glob("calm.*.mp4")
    ).read_bytes()
    assert not (out / ".gitignore").exists()  # only the default folder ignores itself


@pytest.mark.slow
def test_gallery_refuses_a_folder_it_could_damage(offline_repo: Repo) -> None:
    """--out pointing at the outputs or the specs is refused before anything is written."""
    for where in ("videos", "specs", "."):
        result = offline_repo.run("gallery", "--out", where)
        assert result.returncode == 1 and "give the gallery a folder of its own" in result.stderr
    assert not (offline_repo.path / "index.html").exists()


# -- the page in a real browser ------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
    "--hide-scrollbars", "--mute-audio",
)  # fmt: skip


class Browser:
    """Headless Chromium and one page, over the DevTools protocol's websocket."""

    def __init__(self, executable: str, profile: Path) -> None:
        import websocket

        self.log = profile / "chromium.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not start (exit {self.proc.returncode}):\n{tail}")
            time.sleep(0.05)
        port = active.read_text().splitlines()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.load(answer)
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, (method, message["error"])
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            assert time.monotonic() < deadline, f"no {event} in {timeout} s"
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str, *, width: int = 1280, height: int = 800) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """Evaluate in the page, awaiting a promise; a thrown error fails the test."""
        answer = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True, timeout=60_000)  # fmt: skip
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and failed loads the log reports."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "assert",
                "warning",
            ):
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(
                    f"{params['entry']['source']}: {params['entry']['text']} {params['entry'].get('url', '')}"
                )
        return found

    def screenshot(self, *targets: Path) -> bytes:
        """The whole page as PNG, saved to every target."""
        height = self.js("document.documentElement.scrollHeight")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        import base64

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return data

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Debian's chromium; missing, it skips, or fails where RECONCILE_REQUIRE_BROWSER=1 (CI)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = "chromium is not installed (apt-get install chromium)" if not executable else None
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing = "websocket-client is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("RECONCILE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RECONCILE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    assert executable is not None
    started = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))  # fails, never skips
    yield started
    started.close()


VIDEOS_PLAY = """(async () => {
  const results = [];
  for (const v of document.querySelectorAll('.card video')) {
    const r = {name: v.closest('.card').dataset.name,
               canPlay: v.canPlayType('video/mp4; codecs="avc1.64001f, mp4a.40.2"')};
    v.muted = true;
    r.metadata = await new Promise(done => {
      if (v.readyState >= 1) return done('ok');
      v.addEventListener('loadedmetadata', () => done('ok'), {once: true});
      v.addEventListener('error', () => done('error ' + (v.error && v.error.message)), {once: true});
      setTimeout(() => done('timeout'), 15000);
    });
    Object.assign(r, {duration: v.duration, width: v.videoWidth, height: v.videoHeight});
    try {
      await v.play();
      r.played = await new Promise(done => {
        v.addEventListener('timeupdate', () => { if (v.currentTime > 0.25) done(true); });
        setTimeout(() => done(false), 15000);
      });
    } catch (e) { r.played = 'play() rejected: ' + e; }
    v.pause();
    Object.assign(r, {readyState: v.readyState, frames: v.getVideoPlaybackQuality().totalVideoFrames,
                      audioBytes: v.webkitAudioDecodedByteCount});
    results.push(r);
  }
  return results;
})()"""

POSTERS_DECODE = """Promise.all([...document.querySelectorAll('video[poster]')].map(v => {
  const img = new Image(); img.src = v.poster;
  return img.decode().then(() => [v.closest('.card').dataset.name, img.naturalWidth, img.naturalHeight],
                           e => [v.closest('.card').dataset.name, String(e), 0]);
}))"""

VISIBLE = "[...document.querySelectorAll('.card')].filter(c => c.offsetParent !== null).map(c => c.dataset.name)"


def click_filter(browser: Browser, state: str) -> list[str]:
    visible: list[str] = browser.js(
        f"document.querySelector('[data-filter=\"{state}\"]').click(); {VISIBLE}"
    )
    return visible


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's own examples (text, image, frames, references, a chain) applied with --sim,
    plus one spec added after, so the page has a card without a video."""
    path = tmp_path_factory.mktemp("example") / "assets-repo"
    path.mkdir()
    for name in ("specs", "assets"):
        shutil.copytree(ROOT / name, path / name)
    shutil.copy(ROOT / "reconcile.yaml", path)
    repo = Repo(path, None)
    started = time.monotonic()
    applied = repo.run("apply", "--sim", "--yes", timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    repo.write("specs/later.yaml", f"name: later\nmodel: {FAST}\nprompt: Tomorrow's shot.\n")
    out = path.parent / "gallery out"  # a space: the page's hrefs must be quoted
    made = repo.run("gallery", "--sim", "--out", str(out))
    assert made.returncode == 0, made.stderr
    print(f"apply --sim + gallery: {time.monotonic() - started:.1f} s")
    return out / "index.html"


@pytest.mark.slow
def test_the_example_gallery_plays_in_chromium(
    browser: Browser, example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example repo's gallery opens from disk with no console errors, every poster decodes,
    every video loads, decodes and plays (H.264 and AAC), and a screenshot is saved."""
    browser.open(example.as_uri())
    assert browser.problems() == []
    names = browser.js(VISIBLE)
    assert names == ["hero", "hero-extended", "later", "product-shot", "teaser-vertical",
                     "title-card", "title-to-sunset"]  # fmt: skip
    posters = browser.js(POSTERS_DECODE)
    assert len(posters) == 6
    for name, width, height in posters:
        assert (width, height) == ((360, 640) if name == "teaser-vertical" else (640, 360)), name
    shot = browser.screenshot(tmp_path / "gallery.png", SCREENSHOT)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        print(f"\ngallery screenshot: {SCREENSHOT} (and {tmp_path / 'gallery.png'})")
    videos = browser.js(VIDEOS_PLAY)
    assert [v["name"] for v in videos] == [n for n in names if n != "later"]
    lengths = {"hero-extended": 15, "teaser-vertical": 6, "title-card": 4}
    for v in videos:
        assert v["canPlay"] == "probably" and v["metadata"] == "ok", v
        assert abs(v["duration"] - lengths.get(v["name"], 8)) < 0.2, v
        size = (720, 1280) if v["name"] == "teaser-vertical" else (1280, 720)
        assert (v["width"], v["height"]) == size, v
        assert v["played"] is True and v["readyState"] >= 2 and v["frames"] > 0, v
        assert v["audioBytes"] > 0, v
    assert browser.problems() == []


@pytest.mark.slow
def test_the_filter_and_the_reasons_work_in_chromium(browser: Browser, tmp_path: Path) -> None:
    """In a real browser: the filter hides and shows cards by state, a link to a hidden source
    card shows it, and failed and blocked cards show their reasons."""
    with Simulator(api_key=API_KEY, latency=0.2) as sim:
        repo = failing_repo(Repo(tmp_path / "assets-repo", sim), sim)
    assert repo.run("gallery").returncode == 0
    browser.open((repo.path / "state" / "gallery" / "index.html").as_uri())
    assert browser.js(VISIBLE) == ["base", "calm", "later", "mid"]
    assert click_filter(browser, "failed") == ["base"]
    assert click_filter(browser, "blocked") == ["mid"]
    assert click_filter(browser, "materialized") == ["calm"]
    assert click_filter(browser, "all") == ["base", "calm", "later", "mid"]
    reasons = browser.js(
        "Object.fromEntries([...document.querySelectorAll('.card')].map("
        "c => [c.dataset.name, (c.querySelector('.reason') || {}).innerText || '']))"
    )
    assert "Content policy violation" in reasons["base"]
    assert "its source `base` is blocked: refused by content policy" in reasons["mid"]
    assert reasons["calm"] == ""
    click_filter(browser, "failed")
    browser.js("document.querySelector('#card-mid') && (location.hash = '#card-mid'); "
               "new Promise(r => setTimeout(r, 200))")  # fmt: skip
    assert browser.js(VISIBLE) == ["base", "calm", "later", "mid"]
    [calm] = browser.js(VIDEOS_PLAY)
    assert calm["played"] is True and calm["frames"] > 0, calm
    assert browser.problems() == []
