"""Driving a backend's serve() the way the Server SUT does, for the backend tests."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from harness.backends.protocol import GenerationBackend, GenerationRequest

LEFT_OVER = "left for another serving thread"
HANG_GUARD_S = 600  # only a backend that never streams gets near this


def serve_in_two_waves(backend: GenerationBackend, requests: Sequence[GenerationRequest],
                       ) -> tuple[dict, dict, queue.Queue]:
    """Half the requests queued before serve() starts, the rest once the first of those has its
    first token (so while they are in flight), then a None and one more item, which serve() must
    leave in the queue. Returns what each handler saw, with the thread it ran on:
    ({qsl_index: (first token, thread)}, {qsl_index: (ids, thread)}, queue)."""
    arrivals: queue.Queue = queue.Queue()
    first, done = {}, {}
    streaming = threading.Event()
    half = len(requests) // 2
    for request in requests[:half]:
        arrivals.put(request)

    def on_first_token(request: GenerationRequest, token: int) -> None:
        first.setdefault(request.qsl_index, (token, threading.get_ident()))
        streaming.set()

    def arrive_later() -> None:
        streaming.wait(HANG_GUARD_S)
        for request in requests[half:]:
            arrivals.put(request)
        arrivals.put(None)
        arrivals.put(LEFT_OVER)

    feeder = threading.Thread(target=arrive_later)
    feeder.start()
    backend.serve(arrivals, on_first_token, lambda r, ids: done.setdefault(r.qsl_index, (ids, threading.get_ident())))
    feeder.join()
    return first, done, arrivals
