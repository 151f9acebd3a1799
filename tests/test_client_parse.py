"""The client's pure parts: operation answers, names, file ids, error envelopes, backoff and retries.

Every body in ``tests/fixtures/veo/`` (one per documented variant of the wire protocol, copied from
the shared fixture set) appears in exactly one table here, so a new variant cannot go unparsed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.errors import (
    AmbiguousError,
    ApiError,
    ContentPolicyError,
    FatalError,
    FileMissing,
    FilteredError,
    ModelUnavailable,
    OperationFailed,
    OperationLost,
    PermanentError,
    RateLimited,
    ServerError,
    TransientError,
)
from reconciler.pacing import Backoff, with_retries
from reconciler.wire import (
    SUBMIT_RETRYING_5XX,
    Call,
    Failure,
    OpResult,
    answer_error,
    file_id_of,
    operation_id,
    parse_operation,
    transport_error,
)


def error_from_response(
    status: int, body: str, headers: httpx.Headers | dict[str, str], call: Call = Call.SUBMIT
) -> ApiError:
    """The error an answer means, for the submit call unless said otherwise."""
    return answer_error(call, status, body, headers)


FIXTURES = Path(__file__).parent / "fixtures" / "veo"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# file -> (done, file id of the video, error class)
OPERATIONS: dict[str, tuple[bool, str | None, type[PermanentError] | None]] = {
    "poll-running-done-absent.json": (False, None, None),
    "poll-running-done-false.json": (False, None, None),
    "submit-ok-models-name.json": (False, None, None),
    "submit-ok-operations-name.json": (False, None, None),
    "poll-done-wrapped.json": (True, "abc", None),
    "poll-done-flat.json": (True, "generated-video-id", None),
    "poll-done-filtered-wrapped.json": (True, None, FilteredError),
    "poll-done-filtered-flat.json": (True, None, FilteredError),
    "poll-done-error.json": (True, None, OperationFailed),
}

# file -> (HTTP status it comes with, error class)
ERRORS: dict[str, tuple[int, type[ApiError]]] = {
    "error-gptproto-401.json": (401, FatalError),
    "error-gptproto-403-balance.json": (403, FatalError),
    "error-gptproto-content-policy.json": (400, ContentPolicyError),
    "error-google-429.json": (429, RateLimited),
    "error-google-400-duration-type.json": (400, PermanentError),
}


def test_every_fixture_is_covered() -> None:
    """Each fixture body is in exactly one table of this module."""
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert len(names) >= 14
    assert names == set(OPERATIONS) | set(ERRORS)
    assert not set(OPERATIONS) & set(ERRORS)


@pytest.mark.parametrize(("name", "expected"), OPERATIONS.items(), ids=OPERATIONS.keys())
def test_parse_operation_fixtures(
    name: str, expected: tuple[bool, str | None, type[PermanentError] | None]
) -> None:
    """Every documented operation shape parses to done, its video's file id, or a final error."""
    done, file_id, error = expected
    result = parse_operation(fixture(name))
    assert result.done is done
    assert result.file_id == file_id
    if file_id is not None:
        assert result.video_uri is not None and f"/files/{file_id}:download" in result.video_uri
    else:
        assert result.video_uri is None
    assert type(result.error) is (error or type(None))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("poll-done-error.json", "Video generation failed due to an internal error."),
        ("poll-done-filtered-flat.json", "Support codes: 42237218"),
        ("poll-done-filtered-wrapped.json", "Try rephrasing the prompt."),
    ],
)
def test_parse_operation_keeps_the_providers_words(name: str, reason: str) -> None:
    """A failed or filtered operation's error carries the provider's own message."""
    error = parse_operation(fixture(name)).error
    assert error is not None and reason in error.reason


URI = "https://api.gptproto.com/v1beta/files/vid1:download?alt=media"
SHAPES = {
    "generatedVideos instead of generatedSamples": (
        {"done": True, "response": {"generatedVideos": [{"video": {"uri": URI}}]}},
        OpResult(done=True, video_uri=URI, file_id="vid1"),
    ),
    "wrapped generatedVideos": (
        {
            "done": True,
            "response": {"generateVideoResponse": {"generatedVideos": [{"video": {"uri": URI}}]}},
        },
        OpResult(done=True, video_uri=URI, file_id="vid1"),
    ),
    "first sample without a uri is skipped": (
        {"done": True, "response": {"generatedSamples": [{"video": {}}, {"video": {"uri": URI}}]}},
        OpResult(done=True, video_uri=URI, file_id="vid1"),
    ),
    "uri without a file id: download it as given": (
        {"done": True, "response": {"generatedSamples": [{"video": {"uri": "gs://b/v.mp4"}}]}},
        OpResult(done=True, video_uri="gs://b/v.mp4", file_id=None),
    ),
    "done false with a response is still running": (
        {"done": False, "response": {"generatedSamples": [{"video": {"uri": URI}}]}},
        OpResult(done=False),
    ),
}


@pytest.mark.parametrize(("body", "expected"), SHAPES.values(), ids=SHAPES.keys())
def test_parse_operation_shapes(body: dict[str, Any], expected: OpResult) -> None:
    """The other documented variants of a finished operation parse to the video."""
    assert parse_operation(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"done": True},
        {"done": True, "response": {}},
        {"done": True, "response": {"generateVideoResponse": {"generatedSamples": []}}},
    ],
    ids=["no response", "empty response", "empty samples"],
)
def test_done_without_a_video_is_not_success(body: dict[str, Any]) -> None:
    """A finished operation with no sample is a final filtered result, never a success."""
    result = parse_operation(body)
    assert result.done and result.video_uri is None
    assert isinstance(result.error, FilteredError)


@pytest.mark.parametrize("body", [[], "done", None, 3])
def test_parse_operation_non_object_is_transient(body: Any) -> None:
    """An answer that is not a JSON object is a transient fault: poll again."""
    with pytest.raises(TransientError):
        parse_operation(body)


@pytest.mark.parametrize(
    ("name", "op_id"),
    [
        ("models/veo-3.1-generate-preview/operations/abc123def456", "abc123def456"),
        ("operations/mg3pt9cbmvr1", "mg3pt9cbmvr1"),
        ("models/veo-3.1-fast-generate-preview/operations/9bs4xi895fwx/", "9bs4xi895fwx"),
        (fixture("submit-ok-models-name.json")["name"], "abc123def456"),
        (fixture("submit-ok-operations-name.json")["name"], "mg3pt9cbmvr1"),
    ],
)
def test_operation_id(name: str, op_id: str) -> None:
    """Both operation-name forms yield the text after the last 'operations/'."""
    assert operation_id(name) == op_id


@pytest.mark.parametrize(
    ("uri", "file_id"),
    [
        ("https://api.gptproto.com/upload/v1beta/files/abc:download?alt=media", "abc"),
        ("https://api.gptproto.com/v1beta/files/abc:download?alt=media", "abc"),
        (
            "https://generativelanguage.googleapis.com/v1beta/files/xyz-9:download?alt=media",
            "xyz-9",
        ),
        ("http://127.0.0.1:8123/v1beta/files/f00:download", "f00"),
        ("https://storage.example.com/bucket/video.mp4", None),
        ("gs://bucket/video.mp4", None),
    ],
)
def test_file_id_of(uri: str, file_id: str | None) -> None:
    """The file id comes out of /upload/, plain and other-host URIs; None when there is none."""
    assert file_id_of(uri) == file_id


def in_seconds(seconds: int) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


# (status, body, headers) -> (class, words in the message)
ERROR_CASES: dict[str, tuple[int, str, dict[str, str], type[ApiError], str]] = {
    "401 GPTProto: the key": (
        401,
        '{"error": {"message": "Invalid signature", "type": "401"}}',
        {},
        FatalError,
        "GPTPROTO_API_KEY",
    ),
    "403 insufficient balance": (
        403,
        '{"error": {"message": "Insufficient balance", "type": "403"}}',
        {},
        FatalError,
        "balance",
    ),
    "403 other: permission": (
        403,
        '{"error": {"code": 403, "message": "Permission denied on model", "status": "PERMISSION_DENIED"}}',
        {},
        FatalError,
        "permission denied",
    ),
    "400 content policy (GPTProto's real status)": (
        400,
        '{"error": {"message": "Content policy violation", "type": "503"}}',
        {},
        ContentPolicyError,
        "content policy",
    ),
    "503 content policy (GPTProto's documented status)": (
        503,
        '{"error": {"message": "Content policy violation", "type": "503"}}',
        {},
        ContentPolicyError,
        "content policy",
    ),
    "400 safety wording, Google envelope": (
        400,
        '{"error": {"code": 400, "message": "The prompt was blocked by safety settings.", "status": "INVALID_ARGUMENT"}}',
        {},
        ContentPolicyError,
        "safety",
    ),
    "400 duration type: final, not policy": (
        400,
        '{"error": {"code": 400, "message": "The value type for durationSeconds needs to be a number.", "status": "INVALID_ARGUMENT"}}',
        {},
        PermanentError,
        "durationSeconds",
    ),
    "404 unknown model": (
        404,
        '{"error": {"code": 404, "message": "models/veo-9 is not found", "status": "NOT_FOUND"}}',
        {},
        ModelUnavailable,
        "veo-9",
    ),
    "429 Google envelope": (
        429,
        '{"error": {"code": 429, "message": "You exceeded your current quota", "status": "RESOURCE_EXHAUSTED"}}',
        {},
        RateLimited,
        "exceeded your current quota",
    ),
    "500 server error": (
        500,
        '{"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}',
        {},
        AmbiguousError,
        "Internal error",
    ),
    "503 unavailable": (
        503,
        '{"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}}',
        {},
        AmbiguousError,
        "unavailable",
    ),
    "502 HTML page (not JSON)": (
        502,
        "<html><body>502 Bad Gateway</body></html>",
        {},
        AmbiguousError,
        "Bad Gateway",
    ),
    "400 plain text (not JSON)": (400, "bad request, sorry", {}, PermanentError, "sorry"),
    "400 JSON that is not an object": (400, '["odd"]', {}, PermanentError, "odd"),
    "400 error as a string": (400, '{"error": "nope"}', {}, PermanentError, "nope"),
    "500 empty body": (500, "", {}, AmbiguousError, "HTTP 500"),
}


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "words"), ERROR_CASES.values(), ids=ERROR_CASES.keys()
)
def test_error_from_response(
    status: int, body: str, headers: dict[str, str], cls: type[ApiError], words: str
) -> None:
    """Each HTTP error, in either envelope or none, maps to its class with a useful message."""
    error = error_from_response(status, body, httpx.Headers(headers))
    assert type(error) is cls
    assert error.status == status
    assert words.lower() in str(error).lower()


@pytest.mark.parametrize(("name", "expected"), ERRORS.items(), ids=ERRORS.keys())
def test_error_fixtures(name: str, expected: tuple[int, type[ApiError]]) -> None:
    """Every error fixture, at the status it comes with, maps to its class and keeps the message."""
    status, cls = expected
    body = (FIXTURES / name).read_text()
    error = error_from_response(status, body, httpx.Headers())
    assert type(error) is cls
    assert error.reason == fixture(name)["error"]["message"]


def test_balance_message_differs_from_permission() -> None:
    """Insufficient balance says so; another 403 does not blame the balance."""
    balance = error_from_response(
        403, (FIXTURES / "error-gptproto-403-balance.json").read_text(), {}
    )
    other = error_from_response(403, '{"error": {"message": "Forbidden", "type": "403"}}', {})
    assert "balance" in str(balance).lower()
    assert "balance" not in str(other).lower()


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("7", 7.0, 7.0),
        ("0.5", 0.5, 0.5),
        (120, 100.0, 120.0),
        (-60, 0.0, 0.0),
        ("-3", 0.0, 0.0),
    ],
    ids=["seconds", "fraction", "HTTP-date", "HTTP-date in the past", "negative"],
)
def test_429_retry_after(value: str | int, low: float, high: float) -> None:
    """A 429's Retry-After, in seconds or as an HTTP-date, becomes retry_after (never negative)."""
    # An int stands for an HTTP-date that many seconds from now, made when the test runs.
    header = in_seconds(value) if isinstance(value, int) else value
    headers = httpx.Headers({"Retry-After": header})
    error = error_from_response(429, fixture_text("error-google-429.json"), headers)
    assert isinstance(error, RateLimited)
    assert error.retry_after is not None and low <= error.retry_after <= high


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}], ids=["absent", "garbage"])
def test_429_without_usable_retry_after(headers: dict[str, str]) -> None:
    """A 429 without a usable Retry-After leaves retry_after None (backoff decides)."""
    error = error_from_response(429, fixture_text("error-google-429.json"), httpx.Headers(headers))
    assert isinstance(error, RateLimited) and error.retry_after is None


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


# What the same answer means differs by call: the per-call tables of ``wire``.
BY_CALL: dict[str, tuple[Call, int, type[ApiError]]] = {
    "404 to the POST: the model is unknown or retired, final": (
        Call.SUBMIT,
        404,
        ModelUnavailable,
    ),
    "404 to a poll: the operation is lost, retried": (Call.POLL, 404, OperationLost),
    "404 to a download: retried (final only past the file's expiry)": (
        Call.DOWNLOAD,
        404,
        FileMissing,
    ),
    "429 to a poll: rate limited, retried": (Call.POLL, 429, RateLimited),
    "503 to a poll: retried": (Call.POLL, 503, ServerError),
    "503 to a download: retried": (Call.DOWNLOAD, 503, ServerError),
    "408 to the POST: nothing accepted, retried": (Call.SUBMIT, 408, TransientError),
    "503 to the POST: ambiguous, the gateway may have passed it on": (
        Call.SUBMIT,
        503,
        AmbiguousError,
    ),
    "302 to a poll without a location: retried, never final": (Call.POLL, 302, TransientError),
    "400 to a poll: retried, never final": (Call.POLL, 400, TransientError),
    "410 to a download: retried": (Call.DOWNLOAD, 410, TransientError),
    "401 to a download: the key, fatal": (Call.DOWNLOAD, 401, FatalError),
}


@pytest.mark.parametrize(("call", "status", "cls"), BY_CALL.values(), ids=BY_CALL.keys())
def test_answers_are_read_per_call(call: Call, status: int, cls: type[ApiError]) -> None:
    """One HTTP status maps to the class its call's table names, with the status kept."""
    error = answer_error(call, status, '{"error": {"message": "x"}}', {}, subject="op-1")
    assert type(error) is cls
    assert error.status == status


@pytest.mark.parametrize("call", [Call.POLL, Call.DOWNLOAD])
def test_policy_words_on_a_poll_or_download_are_not_final(call: Call) -> None:
    """Only the POST can be refused on policy grounds: a poll or download of a paid job that is
    answered 400 'blocked by safety' is retried, never recorded as a final refusal."""
    error = answer_error(call, 400, '{"error": {"message": "blocked by safety"}}', {})
    assert type(error) is TransientError


@pytest.mark.parametrize(
    ("status", "cls"), [(500, ServerError), (503, ServerError), (429, RateLimited)]
)
def test_a_user_may_opt_into_retrying_5xx_on_the_post(status: int, cls: type[ApiError]) -> None:
    """With retries.resubmitAfterServerError, a POST's 5xx is retried (the risk is the user's)."""
    error = answer_error(Call.SUBMIT, status, "{}", {}, table=SUBMIT_RETRYING_5XX)
    assert type(error) is cls


# A failure without an answer: only the POST can leave a paid job behind.
TRANSPORT: dict[str, tuple[Call, Failure, type[ApiError]]] = {
    "POST refused before sending: retry": (Call.SUBMIT, Failure.CONNECT, TransientError),
    "POST refused while building: fatal": (Call.SUBMIT, Failure.UNSENDABLE, FatalError),
    "POST dropped after sending: ambiguous": (Call.SUBMIT, Failure.SENT, AmbiguousError),
    "POST answered without a name: ambiguous": (Call.SUBMIT, Failure.UNREADABLE, AmbiguousError),
    "poll dropped: retry": (Call.POLL, Failure.SENT, TransientError),
    "poll answer not JSON: retry": (Call.POLL, Failure.UNREADABLE, TransientError),
    "download cut short: retry": (Call.DOWNLOAD, Failure.SHORT, TransientError),
    "download redirect loop: retry": (Call.DOWNLOAD, Failure.REDIRECTS, TransientError),
}


@pytest.mark.parametrize(("call", "failure", "cls"), TRANSPORT.values(), ids=TRANSPORT.keys())
def test_transport_failures_are_read_per_call(
    call: Call, failure: Failure, cls: type[ApiError]
) -> None:
    """A failure with no answer maps to its call's class; an ambiguous POST says it may be billed."""
    error = transport_error(call, failure, "what happened")
    assert type(error) is cls
    assert "what happened" in str(error)
    if cls is AmbiguousError:
        assert "billed" in str(error)


def test_answer_error_cuts_the_key_out() -> None:
    """A gateway echoing the request's key in its error page never carries it into a message."""
    body = '{"error": {"message": "bad header x-goog-api-key: sk-secret-1"}}'
    error = answer_error(Call.POLL, 400, body, {}, secret="sk-secret-1")
    assert "sk-secret-1" not in str(error) and "sk-secret-1" not in error.reason


# -- backoff and retries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "backoff",
    [Backoff(), Backoff(base=2.0, cap=60.0, attempts=10), Backoff(base=0.5, cap=3.0)],
    ids=["default", "poll", "small cap"],
)
def test_backoff_delay_bounds(backoff: Backoff) -> None:
    """A delay is between 0 and min(cap, base * 2**attempt): it grows, with jitter, and is capped."""
    for attempt in range(40):
        ceiling = min(backoff.cap, backoff.base * 2**attempt)
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) <= backoff.cap
    # Jitter: the delays are not all the same value.
    assert len({backoff.delay(10) for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [(7.5, 7.5), (0.0, 0.0), (120.0, 120.0), (-5.0, 0.0), (86400.0, 3600.0)],
)
def test_backoff_honours_retry_after(retry_after: float, delay: float) -> None:
    """A server's Retry-After wins over the backoff (even above its cap), bounded to [0, 1 h]."""
    assert Backoff(cap=60.0).delay(3, retry_after) == delay


class Flaky:
    """A call that raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run_with_retries(call: Flaky, backoff: Backoff) -> tuple[str | BaseException, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> str:
        return await with_retries(call, backoff, sleep=sleep)

    try:
        return asyncio.run(main()), sleeps
    except Exception as exc:
        return exc, sleeps


def test_with_retries_retries_transient_then_succeeds() -> None:
    """Transient errors are retried with the backoff's delays (Retry-After first) until success."""
    call = Flaky(TransientError("429", retry_after=4.0), TransientError("503"))
    result, sleeps = run_with_retries(call, Backoff(base=1.0, cap=60.0, attempts=5))
    assert result == "ok" and call.calls == 3
    assert sleeps[0] == 4.0
    assert len(sleeps) == 2 and 0.0 <= sleeps[1] <= 2.0


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("400"),
        ContentPolicyError("policy"),
        FatalError("401"),
        ValueError("a bug, not the network"),
    ],
    ids=["permanent", "content policy", "fatal", "foreign"],
)
def test_with_retries_does_not_retry_other_errors(error: Exception) -> None:
    """Anything but TransientError propagates at once, with no sleep."""
    call = Flaky(error)
    result, sleeps = run_with_retries(call, Backoff(attempts=5))
    assert result is error and call.calls == 1 and sleeps == []


@pytest.mark.parametrize("attempts", [1, 2, 6])
def test_with_retries_stops_after_attempts(attempts: int) -> None:
    """At most `attempts` calls in all; the last TransientError propagates."""
    errors = [TransientError(f"503 #{i}", retry_after=1.0) for i in range(10)]
    call = Flaky(*errors)
    result, sleeps = run_with_retries(call, Backoff(attempts=attempts))
    assert result is errors[attempts - 1]
    assert call.calls == attempts
    assert sleeps == [1.0] * (attempts - 1)


def test_fixture_copies_match_the_shared_originals() -> None:
    """The copied fixture bodies are byte-for-byte the shared ones (when ../shared is present)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "veo"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not beside this checkout; the copies stand alone")
    originals = {p.name: p.read_bytes() for p in shared.glob("*.json")}
    copies = {p.name: p.read_bytes() for p in FIXTURES.glob("*.json")}
    assert copies == originals


KEYED = "https://api.example.com:8443"


@pytest.mark.parametrize(
    ("url", "keyed"),
    [
        (f"{KEYED}/v1beta/models/m/operations/a", True),
        (f"{KEYED}/v1beta/files/f:download?alt=media", True),
        (f"{KEYED}?x=1", True),
        ("https://api.example.com/v1beta/files/f", False),  # another port
        ("https://api.example.com:8444/v1beta/files/f", False),
        ("http://api.example.com:8443/v1beta/files/f", False),  # another scheme
        ("https://storage.example.com:8443/v1beta/files/f", False),
        ("https://u:p@api.example.com:8443/x", True),  # urlsplit's host: the same origin
        ("HTTPS://API.example.com:8443/x", True),  # urlsplit lowers the scheme and host
        ("https://api.exa\tmple.com:8443/x", True),  # urlsplit drops the tab: decided alone
        ("https://api.example.com.evil:8443/x", False),
    ],
)
def test_the_key_goes_only_to_the_configured_origins_however_often_asked(
    url: str, keyed: bool
) -> None:
    """The headers of a request carry the key only for the configured scheme, host and port;
    the answer kept per scheme and host as written is the same the second time, and other
    hosts asked in between do not change it."""
    from reconciler.client import VeoClient
    from reconciler.config import ApiSettings

    client = VeoClient(ApiSettings(KEYED, KEYED, "secret-key"))
    for other in (url, "https://other.example.com/x", f"{KEYED}/y", url):
        headers = client._with_auth(other)
        expected = other == f"{KEYED}/y" or (other == url and keyed)
        assert (headers.get("x-goog-api-key") == "secret-key") is expected, other
