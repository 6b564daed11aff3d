"""Local services for the tests and tools: a command run in a process group of its own, logging to
a file and stopped with all its children; a free port for it.

The local servers the tests and tools start (vLLM's API server and its engine cores, a headless
vLLM node, the nodes of a Ray cluster) each spawn processes of their own; a process group lets
one signal reach all of them, also when the leader has already died."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ProcessGroup:
    """A started process group: a name for messages, the group's leader process and its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
              **fields: object) -> ProcessGroup:
        """`command` in a new group, with this process's environment updated by `env`; `fields`
        are a subclass's own."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, **(env or {})})
        return cls(name, process, log_path, **fields)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group at once: a server that dies, as a crash would leave it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM to the group (a server shuts down in order), SIGKILL what is left after a while."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s: killed", self.name, STOP_TIMEOUT_S)
        # Children may outlive the leader (vLLM's engine core its API server): none is left.
        self.kill()
