"""A Ray cluster of several nodes on this machine: a head and worker nodes, each `ray start` a
process group of its own on 127.0.0.1, waited for until every node is active, and killed at the end.

For the tests (vLLM's Ray executor connects to it through RAY_ADDRESS) and for trying a cluster
by hand:

    python -m tools.ray_cluster --nodes 2     # prints RAY_ADDRESS; Ctrl-C or SIGTERM stops the cluster
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from harness.interrupts import Interrupted, raising_interrupts
from tools.process_group import ProcessGroup, free_port

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
POLL_S = 1.0
ACTIVE_NODE = re.compile(r"^ 1 node_[0-9a-f]+$", re.MULTILINE)  # a line under "Active:" in `ray status`


def ray_command() -> str:
    """The `ray` command installed beside this Python (the tests' venv need not be on PATH)."""
    return str(Path(sys.executable).with_name("ray"))


def node_command(address: str, head: bool, temp_dir: str, cpus: int) -> list[str]:
    # Every port a second cluster on this machine would share is picked free; --block keeps
    # `ray start` in the foreground as its group's leader.
    command = [ray_command(), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
               "--num-gpus", "0", "--temp-dir", temp_dir, "--dashboard-agent-listen-port", str(free_port())]
    if head:
        port = address.rsplit(":", 1)[1]
        return command + ["--head", "--port", port, "--ray-client-server-port", str(free_port()),
                          "--dashboard-port", str(free_port()), "--include-dashboard", "false",
                          "--disable-usage-stats"]
    return command + ["--address", address]


def active_nodes(address: str) -> int:
    """How many nodes the cluster at `address` reports active (0 while its head is not up)."""
    status = subprocess.run([ray_command(), "status", "--address", address], capture_output=True, text=True)
    return len(ACTIVE_NODE.findall(status.stdout)) if status.returncode == 0 else 0


@contextlib.contextmanager
def running_ray_cluster(folder: Path, nodes: int = 2, cpus_per_node: int = 1,
                        timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """A cluster of `nodes` nodes for the duration of the block; yields its address (host:port,
    for RAY_ADDRESS). Each node's log is folder/ray-node<i>.log. Killed at the end whatever happens:
    a test cluster holds nothing worth a graceful stop, and `ray start --block` ignores SIGTERM."""
    address = f"127.0.0.1:{free_port()}"
    # Ray puts unix sockets under its temp dir, whose paths must stay short (107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    started: list[ProcessGroup] = []
    try:
        for index in range(nodes):
            command = node_command(address, index == 0, temp_dir, cpus_per_node)
            started.append(ProcessGroup.start(f"Ray node {index}", command, folder / f"ray-node{index}.log"))
            wait_for_nodes(address, index + 1, started, timeout_s)
        yield address
    finally:
        for node in reversed(started):
            node.kill()
        # Killing a group waits for its leader only: its other members (the head's GCS server)
        # take a moment more to exit. The cluster is gone when its head's port refuses.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while head_listens(address) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(temp_dir, ignore_errors=True)


def head_listens(address: str) -> bool:
    """Whether anything accepts connections at the head's address (host:port)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=POLL_S):
            return True
    except OSError:
        return False


def wait_for_nodes(address: str, count: int, started: Sequence[ProcessGroup], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while active_nodes(address) < count:
        for node in started:
            if not node.alive():
                raise RuntimeError(f"{node.name} exited with status {node.process.returncode} while starting; "
                                   f"end of {node.log_path}:\n{node.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} did not have {count} active nodes within "
                               f"{timeout_s:.0f} s; end of {started[-1].log_path}:\n{started[-1].log_tail()}")
        time.sleep(POLL_S)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--log-dir", type=Path, default=Path("ray-logs"))
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.cpus_per_node < 1:
        parser.error(f"--nodes and --cpus-per-node must be at least 1, got {args.nodes} and {args.cpus_per_node}")
    # SIGTERM as Ctrl-C: either stops the cluster (by default SIGTERM would end this process
    # and leave the nodes running).
    with contextlib.suppress(Interrupted), raising_interrupts(), \
            running_ray_cluster(args.log_dir, args.nodes, args.cpus_per_node) as address:
        print(f"RAY_ADDRESS={address}  ({args.nodes} nodes; Ctrl-C or SIGTERM stops them)", flush=True)
        while True:
            time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
