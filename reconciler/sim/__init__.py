"""A local, faithful emulator of the Veo 3.1 API as GPTProto and Google's Gemini API serve it.

Generating real videos costs money and minutes, and the failures that matter most to a cost-safe
client (a POST whose answer never arrives, a download cut short, a redirect to another host, a
result filtered for safety, an expired file) cannot be produced on demand against the real
service. This package serves the same wire protocol (see shared/veo-api.md) over real loopback
sockets, so the client is tested with its real HTTP stack, the way moto stands in for AWS:
submit, poll and download endpoints with the documented JSON shapes and error envelopes, request
validation like the live API's, counters of what would have been paid, a recording of every
request, and faults injected per endpoint. Its videos are real, playable clips (PyAV encodes
them); everything else is the standard library, and without PyAV it serves stand-in files, so the
CLI can run it as ``reconcile sim`` anywhere; a second process steers it through ``/_sim/``
endpoints.

The parts, each importing only those before it (and ``reconciler.facts`` and ``reconciler.mp4``):

- ``faults``: the injectable faults and which endpoint each applies to;
- ``images``: what the live API answers 400 to in a request's images (frames, reference images);
- ``rules``: what else it answers 400 to, per model and mode, and what an accepted submission
  produces;
- ``font`` and ``video``: the playable clips, a test pattern labelled with the prompt;
- ``service``: the state (operations, files, counters, recordings, fault queues), test controls;
- ``http``: servers, request handler, error envelopes;
- ``simulator``: ``Simulator``, the endpoints and the control plane on top of all of them.

Everything a test needs is importable from here: ``from reconciler.sim import Simulator, stall``.
"""

from reconciler.facts import MODELS

from .faults import (
    ENDPOINTS,
    Fault,
    content_policy,
    cut_download,
    drop_after_accept,
    drop_before_accept,
    echo_headers,
    expired,
    fault_from_json,
    filtered,
    gateway_error,
    http_error,
    op_error,
    rate_limited,
    redirect,
    server_error,
    slow,
    stall,
)
from .service import RecordedRequest, SimOperation
from .simulator import Simulator

__all__ = [
    "ENDPOINTS",
    "MODELS",
    "Fault",
    "RecordedRequest",
    "SimOperation",
    "Simulator",
    "content_policy",
    "cut_download",
    "drop_after_accept",
    "drop_before_accept",
    "echo_headers",
    "expired",
    "fault_from_json",
    "filtered",
    "gateway_error",
    "http_error",
    "op_error",
    "rate_limited",
    "redirect",
    "server_error",
    "slow",
    "stall",
]
