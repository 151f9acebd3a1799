"""The Veo simulator speaks the documented wire protocol and injects each fault faithfully."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reconciler import sim as simmod
from reconciler.mp4 import probe
from reconciler.sim import Fault, Simulator

KEY = "sim-key"
STD = "veo-3.1-generate-preview"
FAST = "veo-3.1-fast-generate-preview"
LATENCY = 0.05
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(latency=LATENCY, redirect_host="127.0.0.2", video="standin") as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers={"x-goog-api-key": KEY}, timeout=5) as c:
        yield c


def body(prompt: str = "a cat on a mat", **params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"instances": [{"prompt": prompt}]}
    if params:
        out["parameters"] = params
    return out


def submit(
    c: httpx.Client, payload: dict[str, Any] | None = None, model: str = FAST
) -> httpx.Response:
    return c.post(f"/v1beta/models/{model}:predictLongRunning", json=payload or body())


def wait_done(c: httpx.Client, name: str, limit: float = 3.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        r = c.get(f"/v1beta/{name}")
        assert r.status_code == 200, r.text
        if r.json().get("done"):
            return r.json()
        assert time.monotonic() < deadline, "operation never finished"
        time.sleep(LATENCY / 2)


def generate(c: httpx.Client, payload: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    r = submit(c, payload)
    assert r.status_code == 200, r.text
    return r.json()["name"], wait_done(c, r.json()["name"])


def uri_of(done: dict[str, Any]) -> str:
    resp = done["response"]
    samples = resp.get("generateVideoResponse", resp)["generatedSamples"]
    uri: str = samples[0]["video"]["uri"]
    return uri


def file_id(uri: str) -> str:
    return uri.split("/files/")[1].split(":download")[0]


# -- the happy path -------------------------------------------------------------------------------


def test_round_trip(sim: Simulator, client: httpx.Client) -> None:
    """Submit, poll until done, download: the MP4 has the requested duration and frame size."""
    r = submit(client, body(durationSeconds=6, aspectRatio="9:16"))
    assert r.status_code == 200
    name = r.json()["name"]
    op_id = name.rsplit("operations/", 1)[1]
    assert name == f"models/{FAST}/operations/{op_id}" and len(op_id) == 12 and op_id.isalnum()
    assert op_id == op_id.lower()
    done = wait_done(client, name)
    uri = uri_of(done)
    assert uri == f"{sim.base_url}/upload/v1beta/files/{file_id(uri)}:download?alt=media"
    v = client.get(uri)
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
    assert int(v.headers["content-length"]) == len(v.content) == 48 * 1024
    info = probe(v.content)
    assert (info.duration_s, info.width, info.height, info.has_audio) == (6, 720, 1280, True)
    assert v.content == sim.served_bytes(file_id(uri)) == sim.operations[op_id].video
    assert (sim.paid_posts, sim.post_requests, sim.downloads) == (1, 1, 1)
    assert sim.polls >= 1
    op = sim.operations[op_id]
    assert (op.model, op.prompt, op.state, op.file_id) == (
        FAST,
        "a cat on a mat",
        "succeeded",
        file_id(uri),
    )
    assert op.request == body(durationSeconds=6, aspectRatio="9:16")


def test_running_poll_shape() -> None:
    """A running operation answers done: false with metadata (createTime, updateTime)."""
    with Simulator(latency=30) as s, httpx.Client(headers={"x-goog-api-key": KEY}) as c:
        name = c.post(f"{s.base_url}/v1beta/models/{STD}:predictLongRunning", json=body()).json()[
            "name"
        ]
        r = c.get(f"{s.base_url}/v1beta/{name}").json()
        assert r["name"] == name and r["done"] is False
        assert {"createTime", "updateTime", "@type"} <= set(r["metadata"])
        assert s.operations[name.rsplit("/", 1)[1]].state == "running"


def test_omit_done_while_running() -> None:
    """With omit_done the running body has no done key; the finished one still says done: true."""
    with (
        Simulator(latency=30, omit_done=True) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        name = submit(c).json()["name"]
        running = c.get(f"/v1beta/{name}").json()
        assert "done" not in running and running["name"] == name
        s.set_latency(0)
        assert c.get(f"/v1beta/{name}").json()["done"] is True


def test_name_form_operations() -> None:
    """name_form operations answers operations/{id} with metadata.createTime, pollable there."""
    with (
        Simulator(latency=LATENCY, name_form="operations") as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        r = submit(c).json()
        assert r["name"].startswith("operations/") and r["name"].count("/") == 1
        assert r["metadata"]["createTime"].endswith("Z")
        assert wait_done(c, r["name"])["name"] == r["name"]


def test_name_form_mixed_alternates() -> None:
    """name_form mixed alternates the models/… and operations/… forms."""
    with (
        Simulator(latency=LATENCY, name_form="mixed") as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        names = [submit(c).json()["name"] for _ in range(4)]
    assert [n.startswith("models/") for n in names] == [True, False, True, False]


def test_poll_at_either_path(client: httpx.Client) -> None:
    """An operation is pollable at /models/{model}/operations/{id} and at /operations/{id}."""
    name = submit(client).json()["name"]
    op_id = name.rsplit("/", 1)[1]
    assert client.get(f"/v1beta/operations/{op_id}").json()["name"] == name
    assert client.get(f"/v1beta/models/{FAST}/operations/{op_id}").status_code == 200
    wrong_model = client.get(f"/v1beta/models/{STD}/operations/{op_id}")
    assert wrong_model.status_code == 404


def test_done_shape_flat() -> None:
    """done_shape flat puts @type and generatedSamples in response, uri without /upload/."""
    with (
        Simulator(latency=LATENCY, done_shape="flat") as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        _, done = generate(c)
        resp = done["response"]
        assert (
            resp["@type"].endswith("GenerateVideoResponse") and "generateVideoResponse" not in resp
        )
        uri = resp["generatedSamples"][0]["video"]["uri"]
        assert uri.startswith(f"{s.base_url}/v1beta/files/") and uri.endswith(":download?alt=media")
        assert c.get(uri).status_code == 200


def test_done_shape_mixed_alternates() -> None:
    """done_shape mixed alternates wrapped and flat results, per operation."""
    with (
        Simulator(latency=LATENCY, done_shape="mixed") as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        shapes = ["generateVideoResponse" in generate(c)[1]["response"] for _ in range(3)]
    assert shapes == [True, False, True]


def test_every_video_is_distinct(sim: Simulator, client: httpx.Client) -> None:
    """Two generations of the same spec give different bytes, as the real model does."""
    a = client.get(uri_of(generate(client)[1])).content
    b = client.get(uri_of(generate(client)[1])).content
    assert a != b and probe(a) == probe(b)
    assert sim.posts_for("cat") == 2 and sim.posts_for("dog") == 0


@pytest.mark.parametrize(
    ("params", "size", "duration"),
    [
        ({}, (1280, 720), 8),
        ({"resolution": "720p", "durationSeconds": 4}, (1280, 720), 4),
        ({"resolution": "1080p"}, (1920, 1080), 8),
        ({"resolution": "1080p", "aspectRatio": "9:16", "durationSeconds": 8}, (1080, 1920), 8),
        ({"resolution": "4k", "durationSeconds": 8.0}, (3840, 2160), 8),
        (
            {"personGeneration": "allow_all", "enhancePrompt": False, "negativePrompt": "x"},
            (1280, 720),
            8,
        ),
    ],
)
def test_video_matches_parameters(
    sim: Simulator,
    client: httpx.Client,
    params: dict[str, Any],
    size: tuple[int, int],
    duration: float,
) -> None:
    """Resolution, aspect ratio and duration decide the served video's metadata."""
    info = probe(client.get(uri_of(generate(client, body(**params))[1])).content)
    assert ((info.width, info.height), info.duration_s) == (size, duration)


def test_image_to_video_accepted(client: httpx.Client) -> None:
    """An image as bytesBase64Encoded + image/png or image/jpeg is accepted."""
    for mime in ("image/png", "image/jpeg"):
        payload = body()
        payload["instances"][0]["image"] = {"bytesBase64Encoded": PNG, "mimeType": mime}
        assert submit(client, payload).status_code == 200


def test_video_extension(sim: Simulator, client: httpx.Client) -> None:
    """Video-to-video needs a live generated file and yields source + 7 s; it resets the file's clock."""
    _, done = generate(client, body(durationSeconds=8))
    uri = uri_of(done)
    ext = body("continue")
    ext["instances"][0]["video"] = {"uri": uri}
    _, done2 = generate(client, ext)
    assert probe(client.get(uri_of(done2)).content).duration_s == 15
    for params, msg in (
        ({"resolution": "1080p"}, "720p"),
        ({"durationSeconds": 6}, "durationSeconds 8"),
    ):
        bad = {**ext, "parameters": params}
        r = submit(client, bad)
        assert r.status_code == 400 and msg in r.json()["error"]["message"]
    other = {
        "instances": [{"prompt": "x", "video": {"uri": uri.replace(file_id(uri), "zzzzzzzzzzzz")}}]
    }
    assert submit(client, other).status_code == 400
    sim.expire_files()
    r = submit(client, ext)
    assert r.status_code == 400 and "generated by this service" in r.json()["error"]["message"]
    assert sim.paid_posts == 2


def test_file_ttl_and_extension_resets_clock() -> None:
    """With file_ttl files vanish after that long, unless a video-to-video request referenced them."""
    with (
        Simulator(latency=0.0, file_ttl=0.5) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        uri_a = uri_of(generate(c)[1])
        uri_b = uri_of(generate(c)[1])
        time.sleep(0.3)
        ext = {"instances": [{"prompt": "more", "video": {"uri": uri_b}}]}
        assert submit(c, ext).status_code == 200
        time.sleep(0.3)
        assert c.get(uri_a).status_code == 404
        assert c.get(uri_b).status_code == 200


# -- auth and validation --------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"x-goog-api-key": "wrong"}])
def test_key_required_everywhere(
    sim: Simulator, client: httpx.Client, headers: dict[str, str]
) -> None:
    """A missing or wrong key gets GPTProto's 401 envelope on submit, poll and download."""
    name, done = generate(client)
    with httpx.Client(base_url=sim.base_url, headers=headers) as anon:
        responses = [submit(anon), anon.get(f"/v1beta/{name}"), anon.get(uri_of(done))]
    for r in responses:
        assert r.status_code == 401
        assert r.json() == {"error": {"message": "Invalid signature", "type": "401"}}
    assert sim.paid_posts == 1 and sim.post_requests == 2


def test_no_key_configured_accepts_any() -> None:
    """api_key=None turns the key check off."""
    with Simulator(api_key=None, latency=LATENCY) as s, httpx.Client(base_url=s.base_url) as c:
        assert submit(c).status_code == 200


def test_unknown_model_and_operation_404(sim: Simulator, client: httpx.Client) -> None:
    """An unknown model or operation id gets 404 NOT_FOUND in Google's envelope."""
    r = submit(client, model="veo-9")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert "models/veo-9" in r.json()["error"]["message"]
    for path in (
        "/v1beta/operations/nosuchop1234",
        f"/v1beta/models/{STD}/operations/nosuchop1234",
    ):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == 404
    assert sim.paid_posts == 0


def _with_instance(**extra: Any) -> dict[str, Any]:
    payload = body()
    payload["instances"][0].update(extra)
    return payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (body(durationSeconds="8"), "The value type for durationSeconds needs to be a number."),
        (body(durationSeconds=5), "durationSeconds must be 4, 6 or 8"),
        (body(durationSeconds=True), "needs to be a number"),
        (body(resolution="1080p", durationSeconds=4), "only supported with durationSeconds 8"),
        (body(resolution="4k", durationSeconds=6), "only supported with durationSeconds 8"),
        (body(resolution="480p"), "resolution must be"),
        (body(aspectRatio="4:3"), "aspectRatio must be"),
        (body(personGeneration="allow_none"), "personGeneration"),
        (body(enhancePrompt="yes"), "enhancePrompt"),
        (body(aspect_ratio="16:9"), "Unknown parameter 'aspect_ratio'"),
        (body(numberOfVideos=2), "numberOfVideos"),
        ({"instances": [{}]}, "prompt is required"),
        (body("   "), "prompt is required"),
        ({"instances": []}, "exactly one instance"),
        ({"prompt": "x"}, "Unknown name"),
        (
            _with_instance(image={"inlineData": {"mimeType": "image/png", "data": PNG}}),
            "inlineData",
        ),
        (_with_instance(image={"bytesBase64Encoded": PNG, "mimeType": "image/gif"}), "mimeType"),
        (_with_instance(image={"bytesBase64Encoded": "!!", "mimeType": "image/png"}), "base64"),
        (
            _with_instance(
                image={"bytesBase64Encoded": PNG, "mimeType": "image/png"},
                video={"uri": "http://x/v1beta/files/a:download?alt=media"},
            ),
            "cannot be used together",
        ),
        (
            _with_instance(video={"uri": "http://x/v1beta/files/abc:download"}),
            "generated by this service",
        ),
    ],
)
def test_validation_400(sim: Simulator, client: httpx.Client, payload: Any, message: str) -> None:
    """Invalid submissions get 400 INVALID_ARGUMENT with a clear message and create nothing."""
    r = submit(client, payload)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and err["status"] == "INVALID_ARGUMENT"
    assert message in err["message"]
    assert sim.paid_posts == 0 and sim.operations == {} and sim.post_requests == 1


def test_duration_string_exact_message(client: httpx.Client) -> None:
    """durationSeconds "8" gets exactly the body the live API gave (fixture error-google-400)."""
    r = submit(client, body(durationSeconds="8"))
    assert r.json() == {
        "error": {
            "code": 400,
            "message": "The value type for durationSeconds needs to be a number.",
            "status": "INVALID_ARGUMENT",
        }
    }


def test_chunked_body_accepted(client: httpx.Client) -> None:
    """A body sent with Transfer-Encoding: chunked is read like any other."""
    data = json.dumps(body()).encode()
    r = client.post(
        f"/v1beta/models/{FAST}:predictLongRunning",
        content=iter([data[:10], data[10:]]),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_unframeable_body_answered_and_closed(sim: Simulator) -> None:
    """A bad Content-Length gets a 400 and a closed connection, not a crashed handler."""
    host, port = sim.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            f"POST /v1beta/models/{FAST}:predictLongRunning HTTP/1.1\r\nHost: x\r\n"
            f"x-goog-api-key: {KEY}\r\nContent-Length: lots\r\n\r\n".encode()
        )
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"INVALID_ARGUMENT" in answer
    assert sim.paid_posts == 0


def test_non_json_body_400(client: httpx.Client) -> None:
    """A body that is not JSON is a 400."""
    r = client.post(f"/v1beta/models/{FAST}:predictLongRunning", content=b"prompt=cat")
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


# -- downloads ------------------------------------------------------------------------------------


def test_download_before_done_and_after_expiry_404(sim: Simulator, client: httpx.Client) -> None:
    """No file exists before the operation is done, nor after expire_files()."""
    sim.set_latency(30)
    op_id = submit(client).json()["name"].rsplit("/", 1)[1]
    fid = sim.operations[op_id].file_id
    assert fid is not None
    assert client.get(f"/v1beta/files/{fid}:download?alt=media").status_code == 404
    sim.set_latency(0)
    r = client.get(f"/v1beta/files/{fid}:download?alt=media")
    assert r.status_code == 200 and len(r.content) == 48 * 1024
    assert client.get(f"/upload/v1beta/files/{fid}:download?alt=media").status_code == 200
    sim.expire_files()
    r = client.get(f"/v1beta/files/{fid}:download?alt=media")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert sim.served_bytes(fid)  # still inspectable by tests


def test_download_needs_alt_media(client: httpx.Client) -> None:
    """The :download path without alt=media is refused."""
    fid = file_id(uri_of(generate(client)[1]))
    assert client.get(f"/v1beta/files/{fid}:download").status_code == 400


def test_large_video_streams_with_content_length() -> None:
    """video_size sets the file size; a big file streams with a correct Content-Length."""
    with (
        Simulator(latency=0, video_size=3_000_000) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        uri = uri_of(generate(c)[1])
        with c.stream("GET", uri) as r:
            got = b"".join(r.iter_bytes())
        assert len(got) == int(r.headers["content-length"]) == 3_000_000
        assert probe(got).duration_s == 8


# -- faults ---------------------------------------------------------------------------------------


def test_http_error_once_then_normal(sim: Simulator, client: httpx.Client) -> None:
    """http_error answers its status in the chosen envelope for `times` requests, then stops."""
    sim.inject(
        "submit", simmod.http_error(403, "Insufficient balance", envelope="gptproto"), times=2
    )
    for _ in range(2):
        r = submit(client)
        assert r.status_code == 403
        assert r.json() == {"error": {"message": "Insufficient balance", "type": "403"}}
    assert submit(client).status_code == 200
    assert (sim.paid_posts, sim.post_requests) == (1, 3)


def test_rate_limited_retry_after(sim: Simulator, client: httpx.Client) -> None:
    """rate_limited answers 429 RESOURCE_EXHAUSTED, with Retry-After in whole seconds if given."""
    sim.inject("submit", simmod.rate_limited(retry_after=2.5))
    sim.inject("poll", simmod.rate_limited())
    r = submit(client)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"] == {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
    }
    name = submit(client).json()["name"]
    r = client.get(f"/v1beta/{name}")
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert client.get(f"/v1beta/{name}").status_code == 200


def test_server_error_on_poll(sim: Simulator, client: httpx.Client) -> None:
    """server_error answers 503 UNAVAILABLE (or 500 INTERNAL) in Google's envelope."""
    name = submit(client).json()["name"]
    sim.inject("poll", simmod.server_error())
    sim.inject("poll", simmod.server_error(500))
    assert client.get(f"/v1beta/{name}").json()["error"]["status"] == "UNAVAILABLE"
    assert client.get(f"/v1beta/{name}").json()["error"]["status"] == "INTERNAL"
    assert wait_done(client, name)["done"] is True


def test_drop_before_accept(sim: Simulator, client: httpx.Client) -> None:
    """drop_before_accept closes the connection unanswered and creates no operation."""
    sim.inject("submit", simmod.drop_before_accept())
    with pytest.raises(httpx.TransportError):
        submit(client)
    assert (sim.post_requests, sim.paid_posts, sim.operations) == (1, 0, {})
    assert submit(client).status_code == 200  # the server survived


def test_drop_after_accept(sim: Simulator, client: httpx.Client) -> None:
    """drop_after_accept creates and bills the operation, then closes without an answer."""
    sim.inject("submit", simmod.drop_after_accept())
    with pytest.raises(httpx.RemoteProtocolError):
        submit(client, body("the ambiguous one"))
    assert (sim.post_requests, sim.paid_posts) == (1, 1)
    (op,) = sim.operations.values()
    assert op.prompt == "the ambiguous one"
    assert wait_done(client, op.name)["done"] is True  # findable later by its id


def test_drop_on_poll_and_download(sim: Simulator, client: httpx.Client) -> None:
    """A drop injected on poll or download closes that request's connection unanswered."""
    name, done = generate(client)
    sim.inject("poll", simmod.drop_before_accept())
    sim.inject("download", simmod.drop_before_accept())
    with pytest.raises(httpx.TransportError):
        client.get(f"/v1beta/{name}")
    with pytest.raises(httpx.TransportError):
        client.get(uri_of(done))
    assert client.get(uri_of(done)).status_code == 200


@pytest.mark.parametrize("envelope", ["gptproto", "google"])
def test_content_policy(sim: Simulator, client: httpx.Client, envelope: str) -> None:
    """content_policy is a 400 whose message names the policy, in either envelope; nothing billed."""
    sim.inject("submit", simmod.content_policy(envelope=envelope))
    r = submit(client)
    assert r.status_code == 400
    msg = "Content policy violation: the prompt was blocked by safety filters"
    if envelope == "gptproto":
        assert r.json() == {"error": {"message": msg, "type": "400"}}
    else:
        assert r.json()["error"] == {"code": 400, "message": msg, "status": "INVALID_ARGUMENT"}
    assert sim.paid_posts == 0


def test_prompt_contains_targets_faults(sim: Simulator, client: httpx.Client) -> None:
    """prompt_contains limits a fault to submissions whose prompt contains the text."""
    sim.inject("submit", simmod.content_policy(), prompt_contains="gore", times=5)
    assert submit(client, body("a cat")).status_code == 200
    assert submit(client, body("gore scene")).status_code == 400
    assert submit(client, body("more gore")).status_code == 400
    assert sim.posts_for("gore") == 0 and sim.posts_for("cat") == 1


@pytest.mark.parametrize("shape", ["wrapped", "flat"])
def test_filtered(shape: str) -> None:
    """filtered finishes done with raiMediaFilteredCount/Reasons and no samples, in the done shape."""
    with (
        Simulator(latency=LATENCY, done_shape=shape) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        s.inject("submit", simmod.filtered())
        name, done = generate(c)
        resp = done["response"]
        result = resp["generateVideoResponse"] if shape == "wrapped" else resp
        assert result["raiMediaFilteredCount"] == 1 and result["raiMediaFilteredReasons"]
        assert "generatedSamples" not in result and "error" not in done
        op = s.operations[name.rsplit("/", 1)[1]]
        assert (op.state, op.file_id, op.video, s.paid_posts) == ("filtered", None, None, 1)


def test_op_error(sim: Simulator, client: httpx.Client) -> None:
    """op_error finishes done with a google.rpc error and no response."""
    sim.inject("submit", simmod.op_error())
    sim.inject("submit", simmod.op_error(8, "quota"))
    done = generate(client)[1]
    assert done["error"] == {
        "code": 13,
        "message": "Video generation failed due to an internal error.",
    }
    assert "response" not in done
    assert generate(client)[1]["error"] == {"code": 8, "message": "quota"}
    assert {op.state for op in sim.operations.values()} == {"failed"}


def test_slow_and_set_latency(sim: Simulator, client: httpx.Client) -> None:
    """slow(s) fixes one operation's latency; set_latency changes the others, running ones too."""
    sim.inject("submit", simmod.slow(0.6), prompt_contains="slow")
    slow_name = submit(client, body("slow one")).json()["name"]
    sim.set_latency(30)
    fast_name = submit(client).json()["name"]
    assert client.get(f"/v1beta/{fast_name}").json()["done"] is False
    sim.set_latency(0)
    assert client.get(f"/v1beta/{fast_name}").json()["done"] is True
    assert client.get(f"/v1beta/{slow_name}").json()["done"] is False
    assert wait_done(client, slow_name)["done"] is True


def test_cut_download(sim: Simulator, client: httpx.Client) -> None:
    """cut_download promises the full Content-Length, sends half, and closes."""
    uri = uri_of(generate(client)[1])
    sim.inject("download", simmod.cut_download())
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", uri) as r:
        assert int(r.headers["content-length"]) == 48 * 1024
        for chunk in r.iter_raw():
            got += chunk
    assert len(got) == 24 * 1024
    assert client.get(uri).content == sim.served_bytes(file_id(uri))


def test_redirect_records_leaked_key(sim: Simulator, client: httpx.Client) -> None:
    """redirect answers 302 to the redirect host, which serves without a key and records headers."""
    uri = uri_of(generate(client)[1])
    sim.inject("download", simmod.redirect(), times=2)
    r = client.get(uri)
    assert r.status_code == 302 and r.headers["location"].startswith(f"{sim.redirect_base_url}/")
    assert r.headers["location"].endswith(":download?alt=media")
    with httpx.Client() as storage:  # a careful client drops the key on another host
        assert storage.get(r.headers["location"]).content == sim.served_bytes(file_id(uri))
    followed = client.get(uri, follow_redirects=True)  # httpx keeps custom headers across hosts
    assert followed.status_code == 200
    first, second = sim.redirect_requests
    assert first.host == "127.0.0.2" and "x-goog-api-key" not in first.headers
    assert second.headers["x-goog-api-key"] == KEY
    assert sim.downloads == 2 and all(q.host == "127.0.0.1" for q in sim.requests)


def test_expired_fault(sim: Simulator, client: httpx.Client) -> None:
    """expired() answers that download 404 NOT_FOUND; the file itself stays."""
    uri = uri_of(generate(client)[1])
    sim.inject("download", simmod.expired())
    r = client.get(uri)
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert client.get(uri).status_code == 200


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        ("upload", simmod.server_error()),
        ("poll", simmod.filtered()),
        ("poll", simmod.cut_download()),
        ("submit", simmod.redirect()),
        ("download", simmod.slow(1)),
        ("submit", Fault("bogus")),
    ],
)
def test_inject_rejects_misfits(sim: Simulator, endpoint: str, fault: Fault) -> None:
    """inject refuses unknown endpoints and faults that cannot apply there."""
    with pytest.raises(ValueError):
        sim.inject(endpoint, fault)


def test_redirect_needs_redirect_host() -> None:
    """redirect() without a redirect server is refused at inject time."""
    with Simulator() as s, pytest.raises(ValueError, match="redirect_host"):
        s.inject("download", simmod.redirect())


# -- records, control plane, robustness -----------------------------------------------------------


def test_requests_recorded(sim: Simulator, client: httpx.Client) -> None:
    """Every API request is recorded with method, bound host, path, query, lower-case headers, JSON."""
    name, done = generate(client, body("recorded"))
    client.get(uri_of(done))
    post, *polls, get = sim.requests
    assert (post.method, post.host, post.json) == ("POST", "127.0.0.1", body("recorded"))
    assert post.path == f"/v1beta/models/{FAST}:predictLongRunning" and post.query == ""
    assert (
        post.headers["x-goog-api-key"] == KEY and post.headers["content-type"] == "application/json"
    )
    assert all(p.path == f"/v1beta/{name}" and p.json is None for p in polls)
    assert get.query == "alt=media" and get.path.startswith("/upload/v1beta/files/")
    assert post.time <= polls[0].time <= get.time
    assert sim.redirect_requests == []


def test_control_plane(sim: Simulator, client: httpx.Client) -> None:
    """/_sim/stats reports counters and operations; /_sim/faults injects; neither needs a key."""
    with httpx.Client(base_url=sim.base_url) as anon:
        r = anon.post(
            "/_sim/faults",
            json={"endpoint": "submit", "kind": "http_error", "status": 403, "times": 1},
        )
        assert r.status_code == 200
        bad = anon.post("/_sim/faults", json={"endpoint": "submit", "kind": "nope"})
        assert bad.status_code == 400 and "unknown fault kind" in bad.json()["error"]
        anon.post("/_sim/faults", json={"endpoint": "submit", "kind": "slow", "latency": 30})
        assert submit(client).status_code == 403
        name = submit(client, body("via control")).json()["name"]
        stats = anon.get("/_sim/stats").json()
        assert stats["paid_posts"] == 1 and stats["post_requests"] == 2
        assert stats["polls"] == 0 and stats["downloads"] == 0
        (op,) = stats["operations"]
        assert op["id"] == name.rsplit("/", 1)[1] and op["model"] == FAST
        assert (op["prompt"], op["state"]) == ("via control", "running")
        assert anon.post("/_sim/latency", json={"seconds": 0}).status_code == 200
        assert (
            anon.get("/_sim/stats").json()["operations"][0]["state"] == "running"
        )  # slow is fixed
        assert anon.post("/_sim/expire_files").status_code == 200
    assert [r.path for r in sim.requests] == [f"/v1beta/models/{FAST}:predictLongRunning"] * 2


def test_control_plane_retry_after_and_prompt(sim: Simulator, client: httpx.Client) -> None:
    """Control-plane faults take retry_after, envelope and prompt_contains."""
    spec = {
        "endpoint": "submit",
        "kind": "rate_limited",
        "retry_after": 7,
        "envelope": "gptproto",
        "prompt_contains": "dog",
    }
    assert httpx.post(f"{sim.base_url}/_sim/faults", json=spec).status_code == 200
    assert submit(client, body("cat")).status_code == 200
    r = submit(client, body("dog"))
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "429"


def test_concurrent_submissions_counted_exactly(sim: Simulator) -> None:
    """Counters and operations stay exact under concurrent clients."""

    def worker() -> None:
        with httpx.Client(base_url=sim.base_url, headers={"x-goog-api-key": KEY}) as c:
            for _ in range(5):
                assert submit(c).status_code == 200

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.paid_posts == sim.post_requests == len(sim.operations) == 30


def test_survives_client_disconnect_mid_download(capfd: pytest.CaptureFixture[str]) -> None:
    """A client that hangs up mid-body or sends garbage does not kill the server, and stays quiet."""
    with (
        Simulator(latency=0, video_size=8_000_000) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c,
    ):
        uri = uri_of(generate(c)[1])
        for _ in range(3):
            with c.stream("GET", uri) as r:
                next(r.iter_raw())
        host, port = s.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            raw.recv(1024)
        assert len(c.get(uri).content) == 8_000_000
    out, err = capfd.readouterr()
    assert out == "" and "Traceback" not in err


def test_log_lines_without_key(capfd: pytest.CaptureFixture[str]) -> None:
    """log=True writes one line per request to stderr, never the API key."""
    secret = "sk-very-secret"
    with (
        Simulator(api_key=secret, latency=0, log=True) as s,
        httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": secret}) as c,
    ):
        name = submit(c).json()["name"]
        c.get(f"/v1beta/{name}", params={"key": secret})
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and secret not in err
    assert "POST" in lines[0] and "200" in lines[0] and "<redacted>" in lines[1]


def test_stop_with_open_keepalive_connection() -> None:
    """stop() returns promptly even while a client holds a keep-alive connection open."""
    s = Simulator(latency=0).start()
    with httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as c:
        assert submit(c).status_code == 200
        t0 = time.monotonic()
        s.stop()
        assert time.monotonic() - t0 < 2
        with pytest.raises(httpx.TransportError):
            submit(c)
