"""Driving a backend's serve() the way the Server SUT does, for the backend tests."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

from harness.backend import GenerationBackend, GenerationRequest

LEFT_OVER = "left for another serving thread"


def serve_in_two_waves(backend: GenerationBackend, requests: Sequence[GenerationRequest],
                       delay_s: float = 0.5) -> tuple[dict, dict, queue.Queue]:
    """Half the requests queued before serve() starts, the rest while those are in flight, then a
    None and one more item, which serve() must leave in the queue. Returns what each handler saw,
    with the thread it ran on: ({qsl_index: (first token, thread)}, {qsl_index: (ids, thread)}, queue)."""
    arrivals: queue.Queue = queue.Queue()
    first, done = {}, {}
    half = len(requests) // 2
    for request in requests[:half]:
        arrivals.put(request)

    def arrive_later() -> None:
        time.sleep(delay_s)
        for request in requests[half:]:
            arrivals.put(request)
        arrivals.put(None)
        arrivals.put(LEFT_OVER)

    feeder = threading.Thread(target=arrive_later)
    feeder.start()
    backend.serve(arrivals, lambda r, token: first.setdefault(r.qsl_index, (token, threading.get_ident())),
                  lambda r, ids: done.setdefault(r.qsl_index, (ids, threading.get_ident())))
    feeder.join()
    return first, done, arrivals
