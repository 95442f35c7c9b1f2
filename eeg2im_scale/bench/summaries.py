"""Figures derived from benchmark JSONs and from the training loop's ``stats.jsonl``, shared by the
scripts that write them and the README."""

from __future__ import annotations

import json
from pathlib import Path


def cost_growth(corpora: dict, memory: dict) -> dict:
    """Time per sample and peak memory at each corpus size, and their growth from the smallest to
    the largest size: linear cost keeps the per-sample times flat, bounded memory the streaming RSS."""
    sizes = sorted(corpora, key=int)
    per_size = {size: {
        "samples": corpora[size]["num_samples"],
        "write_s_per_ksample": round(1000 * corpora[size]["synthesis_seconds"] / corpora[size]["num_samples"], 3),
        "stream_s_per_ksample": round(1000 * memory[size]["streaming_seconds"] / memory[size]["streaming_samples"], 3),
        "streaming_peak_rss_mib": memory[size]["streaming_peak_rss_mib"],
        "baseline_peak_rss_mib": memory[size]["baseline_peak_rss_mib"],
    } for size in sizes}
    first, last = per_size[sizes[0]], per_size[sizes[-1]]
    ratio = {key: round(last[key] / first[key], 2) for key in first if key != "samples"}
    return {"sizes": per_size, "largest_over_smallest": ratio}


def read_stats(run_dir: Path, stage: str) -> list[dict]:
    """The logging windows the training loop wrote for ``stage`` of the run in ``run_dir``."""
    path = run_dir / "stages" / stage / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def summarize(records: list[dict], global_batch: int) -> dict:
    """Pool the logging windows after the first into totals over their steps.

    Each window's figures are ratios over its wall time (mean per rank of data wait + compute),
    so they are weighted by that time: a mean of ratios would overweight fast windows.
    ``wall_samples_per_s`` divides by the time between the loop's log lines instead, which also
    counts what the loop's step timing leaves out (EMA update, logging collectives)."""
    if len(records) < 2:
        raise RuntimeError(f"need at least 2 logging windows to discard the first, got {len(records)}")
    kept = records[1:]
    steps = [r["step"] - prev["step"] for prev, r in zip(records, kept)]
    walls = [r["step_time_s"] * n for r, n in zip(kept, steps)]
    wall = sum(walls)
    step_time = wall / sum(steps)
    wait_fraction = sum(r["data_wait_fraction"] * w for r, w in zip(kept, walls)) / wall
    return {
        "samples_per_s": round(sum(r["samples_per_s"] * w for r, w in zip(kept, walls)) / wall, 3),
        "step_time_s": round(step_time, 4),
        "data_wait_s": round(wait_fraction * step_time, 5),
        "compute_s": round((1 - wait_fraction) * step_time, 4),
        "data_wait_fraction": round(wait_fraction, 4),
        "tflops_per_s": round(sum(r["tflops_per_s"] * w for r, w in zip(kept, walls)) / wall, 6),
        "peak_memory_mib": max(r["peak_memory_mib"] for r in kept),
        "wall_samples_per_s": round(global_batch * sum(steps) / (kept[-1]["time"] - records[0]["time"]), 3),
        "samples_per_s_windows": [r["samples_per_s"] for r in kept],
        "steps_measured": sum(steps),
    }
