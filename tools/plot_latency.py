"""Plot a Server run's latency distribution from a loadgen detail log (PNG, matplotlib Agg).

Three panels, each a percentile curve of the points loadgen logs (50, 90, 95, 97, 99, 99.9):
time to first token, time per output token, and whole-query latency; the TTFT and TPOT
targets are drawn where the log holds them.

    python -m tools.plot_latency --detail-log output-logs/mlperf_log_detail.txt --output latency.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from harness.loadgen_logs import read_detail_log

log = logging.getLogger(__name__)

NS_PER_MS = 1e6
TARGET_IN_VIEW = 3.0  # draw a target line only when it is within this factor of the slowest point
# (panel title, detail-log key pattern with the percentile as a group, target key or None)
PANELS = (
    ("Time to first token", r"result_first_token_(\d+\.\d+)_percentile_latency_ns", "requested_server_ttft_latency"),
    ("Time per output token", r"result_time_per_output_token_(\d+\.\d+)_percentile_ns",
     "requested_server_tpot_latency"),
    ("Query latency", r"result_(\d+\.\d+)_percentile_latency_ns", None),
)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detail-log", required=True, type=Path, help="loadgen's mlperf_log_detail.txt")
    parser.add_argument("--output", required=True, type=Path, help="PNG file to write")


def validate_args(args: argparse.Namespace) -> None:
    if not args.detail_log.is_file():
        raise SystemExit(f"--detail-log {args.detail_log}: file not found")
    if not args.output.parent.is_dir():
        raise SystemExit(f"--output {args.output}: folder {args.output.parent} does not exist")


def percentile_points(detail: dict[str, Any], pattern: str) -> list[tuple[float, float]]:
    """(percentile, latency in ms) for every key matching `pattern`, by percentile."""
    regex = re.compile(pattern)
    points = []
    for key, value in detail.items():
        match = regex.fullmatch(key)
        if match and isinstance(value, int | float):
            points.append((float(match.group(1)), value / NS_PER_MS))
    return sorted(points)


def nines(percentile: float) -> float:
    """Position on the x axis: 90 -> 1, 99 -> 2, 99.9 -> 3, so that the tail gets room."""
    return -math.log10(1 - percentile / 100)


def latency_curves(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pure: panel title -> its percentile points (ms) and target (ms, or None)."""
    curves = {}
    for title, pattern, target_key in PANELS:
        target = detail.get(target_key) if target_key else None
        curves[title] = {"points_ms": percentile_points(detail, pattern),
                         "target_ms": target / NS_PER_MS if isinstance(target, int | float) and target else None}
    return curves


def label(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def draw_panel(ax: Any, title: str, curve: dict[str, Any]) -> None:
    points = curve["points_ms"]
    xs = [nines(p) for p, _ in points]
    ys = [ms for _, ms in points]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        # Alternate above/below: p95 and p97 sit close together on this axis.
        ax.annotate(label(y), (x, y), textcoords="offset points", xytext=(0, 7 if k % 2 == 0 else -13),
                    ha="center", fontsize=8)
    top = max(ys, default=1.0)
    target = curve["target_ms"]
    if target is not None and target <= TARGET_IN_VIEW * top:
        ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g} ms")
        ax.legend(loc="upper left", fontsize=8)
        top = max(top, target)
    elif target is not None:
        # A target far above the curve would flatten it to the axis: name it instead.
        title = f"{title} (target {target:g} ms)"
    ax.set_xticks(xs, [f"p{p:g}" for p, _ in points])
    ax.set_title(title)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(0, 1.15 * top)  # headroom for the top label
    ax.grid(alpha=0.3)


def draw(curves: dict[str, dict[str, Any]], subtitle: str, output: Path) -> None:
    """Write the PNG: one panel per curve."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.2), constrained_layout=True)
    for ax, (title, curve) in zip(axes, curves.items(), strict=True):
        draw_panel(ax, title, curve)
    fig.suptitle(subtitle)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def describe(detail: dict[str, Any]) -> str:
    return (f"{detail.get('effective_scenario', '?')} at target {detail.get('effective_target_qps', '?')} QPS, "
            f"{detail.get('result_query_count', '?')} queries, result {detail.get('result_validity', '?')}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    detail = read_detail_log(args.detail_log)
    curves = latency_curves(detail)
    if not any(curve["points_ms"] for curve in curves.values()):
        raise SystemExit(f"--detail-log {args.detail_log}: no latency percentiles (a Server performance run logs them)")
    draw(curves, describe(detail), args.output)
    log.info("wrote %s", args.output)
    return {"tool": "plot_latency", "detail_log": str(args.detail_log), "output": str(args.output),
            "title": describe(detail), "curves": curves}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(cli)
    print(json.dumps(main(cli.parse_args()), indent=2, sort_keys=True))
