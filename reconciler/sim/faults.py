"""The faults a test can inject, and which endpoint each one can apply to.

The failures that matter most to a cost-safe client cannot be produced on demand against the real
service, so the simulator queues them: a ``Fault`` is plain data built by one helper per kind
(``http_error``, ``drop_after_accept``, ``cut_download``…), and ``fault_from_json`` builds the
same from a ``POST /_sim/faults`` body, so a second process can steer a running simulator. What
a fault does to a request is up to the endpoint that meets it (see simulator.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("submit", "poll", "download")

# Which fault kinds make sense where: answering kinds reply with an HTTP error, the drops close the
# connection unanswered, and the rest shape an accepted operation or a download.
ANSWER_KINDS = {"http_error", "rate_limited", "server_error", "content_policy", "expired"}
KINDS = {
    "submit": ANSWER_KINDS - {"expired"}
    | {"drop_before_accept", "drop_after_accept", "filtered", "op_error", "slow", "stall"}
    | {"gateway_error", "echo_headers"},
    "poll": ANSWER_KINDS - {"expired"} | {"drop_before_accept", "drop_after_accept", "stall"},
    "download": ANSWER_KINDS
    | {"drop_before_accept", "drop_after_accept", "cut_download", "redirect"},
}


@dataclass
class Fault:
    """One injected fault; build it with the helper functions below."""

    kind: str
    status: int | None = None
    message: str | None = None
    retry_after: float | None = None
    envelope: str = "google"
    latency: float | None = None  # only for kind "slow"


def http_error(
    status: int,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    envelope: str = "google",
) -> Fault:
    return Fault("http_error", status, message, retry_after, envelope)


def rate_limited(retry_after: float | None = None, envelope: str = "google") -> Fault:
    return Fault("rate_limited", 429, None, retry_after, envelope)


def server_error(status: int = 503) -> Fault:
    return Fault("server_error", status)


def gateway_error(status: int = 504) -> Fault:
    """A gateway in front of the provider: the job is created and billed upstream, then the
    gateway answers a 5xx (its own timeout shorter than the upstream's answer)."""
    return Fault("gateway_error", status)


def echo_headers() -> Fault:
    """Create and bill the job, then answer 200 with the request's headers echoed and no
    operation name (a misbehaving gateway): the key must not travel any further."""
    return Fault("echo_headers", 200)


def drop_before_accept() -> Fault:
    """Close the connection without reading the request or creating anything."""
    return Fault("drop_before_accept")


def drop_after_accept() -> Fault:
    """Submit: create and bill the operation, then close with no answer (the ambiguous case)."""
    return Fault("drop_after_accept")


def content_policy(envelope: str = "gptproto") -> Fault:
    """400 refusing the prompt on safety grounds; nothing is created."""
    msg = "Content policy violation: the prompt was blocked by safety filters"
    return Fault("content_policy", 400, msg, envelope=envelope)


def filtered() -> Fault:
    """Submit accepted; the operation ends done with raiMediaFilteredCount and no samples."""
    return Fault("filtered")


def op_error(
    code: int = 13, message: str = "Video generation failed due to an internal error."
) -> Fault:
    return Fault("op_error", code, message)


def slow(latency: float) -> Fault:
    """This operation takes `latency` seconds, whatever set_latency says."""
    return Fault("slow", latency=latency)


def stall(seconds: float) -> Fault:
    """Hold the answer back for `seconds` (submit: after creating and billing the operation)."""
    return Fault("stall", latency=seconds)


def cut_download() -> Fault:
    """Promise the full Content-Length, send half the body, close."""
    return Fault("cut_download")


def redirect() -> Fault:
    """302 to the same path on the redirect server, which serves without a key."""
    return Fault("redirect")


def expired() -> Fault:
    """This download answers 404 NOT_FOUND, as for a file past its 2 days."""
    return Fault("expired", 404, "Requested entity was not found.")


_BUILDERS: dict[str, Any] = {
    "http_error": http_error,
    "rate_limited": rate_limited,
    "server_error": server_error,
    "drop_before_accept": drop_before_accept,
    "drop_after_accept": drop_after_accept,
    "gateway_error": gateway_error,
    "echo_headers": echo_headers,
    "stall": stall,
    "content_policy": content_policy,
    "filtered": filtered,
    "op_error": op_error,
    "slow": slow,
    "cut_download": cut_download,
    "redirect": redirect,
    "expired": expired,
}


def fault_from_json(spec: dict[str, Any]) -> Fault:
    """The Fault a ``POST /_sim/faults`` body describes; defaults come from the kind's helper."""
    kind = spec.get("kind")
    if kind not in _BUILDERS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(_BUILDERS))}")
    if kind == "http_error":
        if not isinstance(spec.get("status"), int):
            raise ValueError("http_error needs an integer status")
        fault: Fault = http_error(spec["status"])
    elif kind == "slow":
        if not isinstance(spec.get("latency"), int | float):
            raise ValueError("slow needs a numeric latency")
        fault = slow(float(spec["latency"]))
    else:
        fault = _BUILDERS[kind]()
    for key in ("status", "message", "retry_after", "envelope", "latency"):
        if spec.get(key) is not None:
            setattr(fault, key, spec[key])
    if spec.get("code") is not None:  # op_error's google.rpc code, by its own name
        fault.status = int(spec["code"])
    return fault
