"""The simulator serves every catalog model, retires ids on demand, and checks all of Veo 3.1's
request surface (last frame, reference images, seed, personGeneration per mode, extension depth)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import jpeg_bytes, png_bytes

from reconciler.facts import CATALOG, MAX_EXTENSIONS, SEED_MAX, ModelFacts
from reconciler.mp4 import probe
from reconciler.sim import Simulator

KEY = "sim-key"
LATENCY = 0.05
PREVIEW = "veo-3.1-generate-preview"
FAST_PREVIEW = "veo-3.1-fast-generate-preview"
GA = "veo-3.1-generate-001"
LITE = "veo-3.1-lite-generate-001"
PNG_RAW, JPEG_RAW = png_bytes(7), jpeg_bytes()
PNG, JPEG = base64.b64encode(PNG_RAW).decode(), base64.b64encode(JPEG_RAW).decode()
SOURCE = "<a live generated video>"  # the table test swaps in a fresh video's URI
RETIRED_MESSAGE = "is not found for API version v1beta, or is no longer available."


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(latency=LATENCY, video="standin") as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers={"x-goog-api-key": KEY}, timeout=5) as c:
        yield c


def img(mime: str = "image/png") -> dict[str, str]:
    return {"bytesBase64Encoded": PNG if mime == "image/png" else JPEG, "mimeType": mime}


def ref(kind: str = "asset") -> dict[str, Any]:
    return {"image": img(), "referenceType": kind}


def req(prompt: str = "a lighthouse at dusk", *, params: Any = None, **inst: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"instances": [{"prompt": prompt, **inst}]}
    if params is not None:
        out["parameters"] = params
    return out


def submit(c: httpx.Client, payload: Any, model: str = GA) -> httpx.Response:
    return c.post(f"/v1beta/models/{model}:predictLongRunning", json=payload)


def generate(c: httpx.Client, payload: Any, model: str = GA) -> str:
    """Submit, wait until done, and return the video's URI."""
    r = submit(c, payload, model)
    assert r.status_code == 200, r.text
    for _ in range(200):
        done = c.get(f"/v1beta/{r.json()['name']}").json()
        if done.get("done"):
            samples = done["response"]["generateVideoResponse"]["generatedSamples"]
            uri: str = samples[0]["video"]["uri"]
            return uri
        time.sleep(LATENCY / 2)
    raise AssertionError("operation never finished")


def op_of(sim: Simulator, r: httpx.Response) -> Any:
    return sim.operations[r.json()["name"].rsplit("/", 1)[1]]


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and set(err) == {"code", "message", "status"}
    message: str = err["message"]
    return message


# -- models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(CATALOG))
def test_every_catalog_model_served_by_default(
    sim: Simulator, client: httpx.Client, model: str
) -> None:
    """Simulator() (as `reconcile sim` builds it) accepts every id in facts.CATALOG and bills it."""
    r = submit(client, req(), model)
    assert r.status_code == 200, r.text
    assert r.json()["name"].startswith(f"models/{model}/operations/")
    assert op_of(sim, r).model == model and sim.paid_posts == 1
    assert set(sim.models) == set(CATALOG) and sim.retired == set()


def test_retired_model_is_404_and_unbilled() -> None:
    """A retired id answers Google's 404 "…no longer available": nothing created or billed."""
    with (
        Simulator(latency=LATENCY, video="standin", retired=(PREVIEW, FAST_PREVIEW)) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        r = submit(c, req(), PREVIEW)
        assert r.json() == {
            "error": {
                "code": 404,
                "message": f"models/{PREVIEW} {RETIRED_MESSAGE}",
                "status": "NOT_FOUND",
            }
        }
        assert RETIRED_MESSAGE in error_of(submit(c, req(), FAST_PREVIEW), 404)
        assert (s.paid_posts, s.post_requests, s.operations) == (0, 2, {})
        assert s.requests[0].json == req()  # still recorded, as every request is
        assert submit(c, req(), GA).status_code == 200


def test_unknown_model_keeps_its_own_404(client: httpx.Client, sim: Simulator) -> None:
    """An id the service never knew answers the "not supported for predictLongRunning" 404."""
    message = error_of(submit(client, req(), "veo-9-generate-001"), 404)
    assert "models/veo-9-generate-001 is not found" in message and "ListModels" in message
    assert RETIRED_MESSAGE not in message and sim.paid_posts == 0


def test_retire_at_runtime_leaves_existing_jobs(sim: Simulator, client: httpx.Client) -> None:
    """retire() refuses new submissions to that id; jobs accepted before still finish."""
    uri = generate(client, req(), PREVIEW)
    sim.retire(PREVIEW)
    sim.retire("veo-2-generate-001")  # any id, served or not, can be retired
    assert RETIRED_MESSAGE in error_of(submit(client, req(), PREVIEW), 404)
    assert RETIRED_MESSAGE in error_of(submit(client, req(), "veo-2-generate-001"), 404)
    assert client.get(uri).status_code == 200 and sim.paid_posts == 1


def test_retire_through_the_control_plane(sim: Simulator, client: httpx.Client) -> None:
    """POST /_sim/retire lets a second process retire an id; stats lists served and retired ids."""
    with httpx.Client(base_url=sim.base_url) as anon:
        r = anon.post("/_sim/retire", json={"model": FAST_PREVIEW})
        assert r.status_code == 200 and r.json() == {"ok": True, "retired": [FAST_PREVIEW]}
        for bad in ({}, {"model": ""}, {"model": 3}, [FAST_PREVIEW]):
            r = anon.post("/_sim/retire", json=bad)
            assert r.status_code == 400 and "model id" in r.json()["error"]
        stats = anon.get("/_sim/stats").json()
    assert stats["models"] == list(CATALOG) and stats["retired"] == [FAST_PREVIEW]
    assert RETIRED_MESSAGE in error_of(submit(client, req(), FAST_PREVIEW), 404)
    assert sim.paid_posts == 0


def test_models_choose_the_served_ids() -> None:
    """models= serves only the ids given; a mapping serves ids of one's own with their own facts."""
    own = ModelFacts({"720p": 0.2}, resolutions=("720p",), durations=(8,))
    with (
        Simulator(latency=LATENCY, video="standin", models={"my-veo": own}) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        assert submit(c, req(), "my-veo").status_code == 200
        message = error_of(submit(c, req(params={"durationSeconds": 4}), "my-veo"), 400)
        assert message == "durationSeconds 4 isn't supported by this model (my-veo); it offers 8."
        assert "resolution 1080p isn't supported" in error_of(
            submit(c, req(params={"resolution": "1080p"}), "my-veo"), 400
        )
        assert "ListModels" in error_of(submit(c, req(), GA), 404)
    with Simulator(models=[LITE]) as s:
        assert list(s.models) == [LITE] and s.models[LITE] is CATALOG[LITE]
    with pytest.raises(ValueError, match="veo-9"):
        Simulator(models=["veo-9", GA])
    with pytest.raises(ValueError, match="not one id"):
        Simulator(models=GA)


@pytest.mark.parametrize(
    ("model", "inst", "params", "status", "words"),
    [
        (LITE, {}, {"resolution": "4k"}, 400,
         f"resolution 4k isn't supported by this model ({LITE}); it offers 720p or 1080p."),
        (LITE, {"referenceImages": [ref()]}, {}, 400,
         f"`referenceImages` isn't supported by this model ({LITE})."),
        (LITE, {}, {"resolution": "1080p"}, 200, None),
        (LITE, {"image": img(), "lastFrame": img()}, {"durationSeconds": 4}, 200, None),
        (GA, {}, {"resolution": "4k"}, 200, None),
        (FAST_PREVIEW, {"referenceImages": [ref()]}, {}, 200, None),
    ],
)  # fmt: skip
def test_model_limits(
    sim: Simulator,
    client: httpx.Client,
    model: str,
    inst: dict[str, Any],
    params: dict[str, Any],
    status: int,
    words: str | None,
) -> None:
    """A resolution or a feature the model lacks (lite: no 4k, no reference images) is a 400."""
    r = submit(client, req(params=params, **inst), model)
    if words is None:
        assert r.status_code == status, r.text
    else:
        assert words in error_of(r, status) and sim.paid_posts == 0


# -- the rest of the request surface --------------------------------------------------------------

TEXT: dict[str, Any] = {}
IMAGE = {"image": img()}
FRAMES = {"image": img(), "lastFrame": img("image/jpeg")}
REFS = {"referenceImages": [ref()]}
EXTEND = {"video": {"uri": SOURCE}}
SEED_WORDS = f"seed must be an integer from 0 to {SEED_MAX}"
NOT_ADULT = "allow_adult for personGeneration is currently not supported."
NOT_ALL = "allow_all for personGeneration is currently not supported."

GIF, INLINE, BAD64 = (
    {**img(), "mimeType": "image/gif"},
    {"inlineData": img()},
    {**img(), "bytesBase64Encoded": "%%"},
)


def refs(*items: Any) -> dict[str, Any]:
    return {"referenceImages": list(items)}


SURFACE = [
    # lastFrame: only together with image
    ("first and last frame", FRAMES, {}, 200, None),
    ("last frame as png", {"image": img("image/jpeg"), "lastFrame": img()}, {}, 200, None),
    ("last frame alone", {"lastFrame": img()}, {}, 400, "lastFrame needs image"),
    ("last frame with video", {"lastFrame": img(), **EXTEND}, {}, 400, "lastFrame needs image"),
    ("last frame gif", {**IMAGE, "lastFrame": GIF}, {}, 400,
     "lastFrame.mimeType must be image/png or image/jpeg, not 'image/gif'."),
    ("last frame inlineData", {**IMAGE, "lastFrame": INLINE}, {}, 400,
     "inlineData isn't supported"),
    ("last frame bad base64", {**IMAGE, "lastFrame": BAD64}, {}, 400,
     "lastFrame.bytesBase64Encoded must be non-empty base64 data."),
    # referenceImages: 1-3 items of exactly {image, referenceType}, 8 s, never with video
    ("one asset", REFS, {}, 200, None),
    ("three assets, 8 s", refs(ref(), ref(), ref()), {"durationSeconds": 8}, 200, None),
    ("style accepted by default", refs(ref("asset"), ref("style")), {}, 200, None),
    ("references with a first frame", {**IMAGE, **REFS}, {}, 200, None),
    ("no references", refs(), {}, 400, "referenceImages must hold 1 to 3 images, not 0."),
    ("four references", refs(*[ref()] * 4), {}, 400, "must hold 1 to 3 images, not 4."),
    ("references not a list", {"referenceImages": ref()}, {}, 400,
     "referenceImages must be a list."),
    ("reference without type", refs({"image": img()}), {}, 400,
     "referenceImages[0] must be an object with exactly image and referenceType."),
    ("reference with referenceId", refs(ref(), {**ref(), "referenceId": 1}), {}, 400,
     "referenceImages[1] must be an object with exactly image and referenceType."),
    ("reference image flattened", refs({**img(), "referenceType": "asset"}), {}, 400,
     "exactly image and referenceType"),
    ("reference type subject", refs(ref("subject")), {}, 400,
     "referenceImages[0].referenceType must be asset or style, not 'subject'."),
    ("reference type in capitals", refs(ref("ASSET")), {}, 400,
     "referenceType must be asset or style"),
    ("reference image gif", refs({"image": GIF, "referenceType": "asset"}), {}, 400,
     "referenceImages[0].image.mimeType must be"),
    ("reference image inlineData", refs({"image": INLINE, "referenceType": "asset"}), {}, 400,
     "inlineData isn't supported"),
    ("references for 6 s", REFS, {"durationSeconds": 6}, 400,
     "referenceImages are only supported with durationSeconds 8."),
    ("references with video", {**REFS, **EXTEND}, {}, 400,
     "referenceImages and video cannot be used together"),
    # seed: a JSON number that is a whole number in 0..2^32-1
    ("seed 0", TEXT, {"seed": 0}, 200, None),
    ("seed max", TEXT, {"seed": SEED_MAX}, 200, None),
    ("seed 42.0", IMAGE, {"seed": 42.0}, 200, None),
    ("seed -1", TEXT, {"seed": -1}, 400, f"{SEED_WORDS}, not -1."),
    ("seed 2^32", TEXT, {"seed": SEED_MAX + 1}, 400, f"{SEED_WORDS}, not 4294967296."),
    ("seed 1.5", TEXT, {"seed": 1.5}, 400, f"{SEED_WORDS}, not 1.5."),
    ("seed string", TEXT, {"seed": "42"}, 400, f'{SEED_WORDS}, not "42".'),
    ("seed bool", TEXT, {"seed": True}, 400, f"{SEED_WORDS}, not true."),
    ("seed null", TEXT, {"seed": None}, 400, f"{SEED_WORDS}, not null."),
    # personGeneration per mode; absent is always fine
    ("text allow_all", TEXT, {"personGeneration": "allow_all"}, 200, None),
    # allow_adult is the only value in the EU, UK, CH and MENA: accepted, the region decides.
    ("text allow_adult", TEXT, {"personGeneration": "allow_adult"}, 200, None),
    ("image allow_adult", IMAGE, {"personGeneration": "allow_adult"}, 200, None),
    ("image allow_all", IMAGE, {"personGeneration": "allow_all"}, 400, NOT_ALL),
    ("frames allow_adult", FRAMES, {"personGeneration": "allow_adult"}, 200, None),
    ("frames allow_all", FRAMES, {"personGeneration": "allow_all"}, 400, NOT_ALL),
    ("references allow_adult", REFS, {"personGeneration": "allow_adult"}, 200, None),
    ("references allow_all", REFS, {"personGeneration": "allow_all"}, 400,
     "Video from reference images takes allow_adult"),
    ("extension allow_all", EXTEND, {"personGeneration": "allow_all"}, 200, None),
    ("extension allow_adult", EXTEND, {"personGeneration": "allow_adult"}, 200, None),
    ("image unset", IMAGE, {}, 200, None),
    ("extension unset", EXTEND, {}, 200, None),
    ("allow_none anywhere", IMAGE, {"personGeneration": "allow_none"}, 400,
     "personGeneration must be allow_all or allow_adult."),
    # durationSeconds 8 for extension, reference images, 1080p and 4k; free elsewhere
    ("extension 8 s", EXTEND, {"durationSeconds": 8}, 200, None),
    ("extension 6 s", EXTEND, {"durationSeconds": 6}, 400,
     "Video extension only supports durationSeconds 8."),
    ("extension 1080p", EXTEND, {"resolution": "1080p"}, 400,
     "Video extension only supports resolution 720p."),
    ("extension 9:16", EXTEND, {"aspectRatio": "9:16"}, 200, None),
    ("image 4 s", IMAGE, {"durationSeconds": 4}, 200, None),
    ("frames 6 s", FRAMES, {"durationSeconds": 6}, 200, None),
    ("1080p 6 s", TEXT, {"resolution": "1080p", "durationSeconds": 6}, 400,
     "resolution 1080p is only supported with durationSeconds 8."),
    ("4k 4 s", IMAGE, {"resolution": "4k", "durationSeconds": 4}, 400,
     "resolution 4k is only supported with durationSeconds 8."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("inst", "params", "status", "words"),
    [pytest.param(*row[1:], id=row[0]) for row in SURFACE],
)
def test_request_surface(
    sim: Simulator,
    client: httpx.Client,
    inst: dict[str, Any],
    params: dict[str, Any],
    status: int,
    words: str | None,
) -> None:
    """Each form is accepted (billed, recorded as sent) or refused (400, its words, unbilled)."""
    if inst.get("video") == {"uri": SOURCE}:
        inst = {**inst, "video": {"uri": generate(client, req("the source"))}}
    payload = req(params=params, **inst)
    paid = sim.paid_posts
    r = submit(client, payload)
    if words is None:
        assert r.status_code == status, r.text
        assert op_of(sim, r).request == payload and sim.paid_posts == paid + 1
    else:
        assert words in error_of(r, status)
        assert r.json()["error"]["status"] == "INVALID_ARGUMENT" and sim.paid_posts == paid
    assert sim.requests[-1].json == payload


def test_reference_styles_off_refuses_style() -> None:
    """Simulator(reference_styles=False) refuses referenceType style as the Gemini API does."""
    with (
        Simulator(latency=LATENCY, video="standin", reference_styles=False) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        message = error_of(submit(c, req(**refs(ref(), ref("style")))), 400)
        assert message == (
            "referenceImages[1].referenceType style is not supported in Gemini API; use asset."
        )
        assert submit(c, req(referenceImages=[ref(), ref()])).status_code == 200
        assert s.paid_posts == 1


def test_new_fields_arrive_byte_for_byte(sim: Simulator, client: httpx.Client) -> None:
    """lastFrame, referenceImages and seed arrive as sent; their images decode to the same bytes."""
    payload = req(
        image=img(),
        lastFrame=img("image/jpeg"),
        referenceImages=[ref("asset"), ref("style")],
        params={"seed": SEED_MAX, "personGeneration": "allow_adult", "durationSeconds": 8},
    )
    r = submit(client, payload, PREVIEW)
    assert r.status_code == 200, r.text
    (sent,) = [q.json for q in sim.requests if q.method == "POST"]
    assert sent == payload and op_of(sim, r).request == payload
    inst = sent["instances"][0]
    assert base64.b64decode(inst["lastFrame"]["bytesBase64Encoded"]) == JPEG_RAW
    assert base64.b64decode(inst["image"]["bytesBase64Encoded"]) == PNG_RAW
    refs = inst["referenceImages"]
    assert [base64.b64decode(x["image"]["bytesBase64Encoded"]) for x in refs] == [PNG_RAW] * 2
    assert type(sent["parameters"]["seed"]) is int and sent["parameters"]["seed"] == 2**32 - 1


# -- extension -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "last"), [(8, 148), (6, 146), (4, 144)])
def test_extension_chain_ends_at_a_141_s_source(first: int, last: int) -> None:
    """Each extension adds 7 s to a source of at most 141 s: 20 extensions deep, then a 400."""
    with (
        Simulator(latency=0, video="standin") as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        uri = generate(c, req(params={"durationSeconds": first}))
        for _ in range(MAX_EXTENSIONS):
            uri = generate(c, req("further", video={"uri": uri}))
        assert probe(c.get(uri).content).duration_s == last
        message = error_of(submit(c, req("one more", video={"uri": uri})), 400)
        assert message.startswith(f"The input video is {last} seconds long;")
        assert "at most 141 seconds (at most 20 extensions, 148 seconds in all)" in message
        assert s.paid_posts == 1 + MAX_EXTENSIONS


def test_extension_needs_a_720p_source(sim: Simulator, client: httpx.Client) -> None:
    """A 1080p video this service made is no source for an extension; a 9:16 720p one is."""
    wide = generate(client, req(params={"resolution": "1080p"}))
    message = error_of(submit(client, req("more", video={"uri": wide})), 400)
    assert message == "Video extension needs a 720p source video; this one is 1920x1080."
    tall = generate(client, req(params={"aspectRatio": "9:16"}))
    r = submit(client, req("more", video={"uri": tall}))
    assert r.status_code == 200 and (op_of(sim, r).width, op_of(sim, r).height) == (720, 1280)
    assert sim.paid_posts == 3


def test_foreign_sources_unchanged() -> None:
    """foreign_sources still takes a source this simulator never made as an 8 s 720p clip."""
    with (
        Simulator(latency=LATENCY, video="standin", foreign_sources=True) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        r = submit(c, req(video={"uri": "https://elsewhere/v1beta/files/abc:download?alt=media"}))
        assert r.status_code == 200 and op_of(s, r).duration_s == 15
