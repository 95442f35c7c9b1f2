"""gpu_run.json from a finished run directory: per stage samples/s, MFU, data-wait share and peak memory
(from each stage's stats.jsonl), and the evaluation's metrics.json, with the machine and the settings.

    python benchmarks/gpu/summarize_run.py RUN_DIR --config CONFIG --out gpu_run.json [key=value ...]

Steady state: the median of the logged windows after the first (which holds start-up and, under
torch.compile, compilation). MFU divides achieved TFLOP/s by the GPU's dense bf16 peak
(``gpu_diffusion.BF16_PEAK_TFLOPS``); it is null on a CPU or an unknown GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_diffusion import bf16_peak  # noqa: E402  (benchmarks/ is not a package)

from eeg2im_scale.config import STAGES, load_config, to_dict  # noqa: E402

FIGURES = ("samples_per_s", "data_wait_fraction", "tflops_per_s", "peak_memory_mib", "step_time_s")


def stage_summary(stats: list[dict], peak: float | None) -> dict:
    steady = stats[1:] or stats
    out = {name: statistics.median(r[name] for r in steady) for name in FIGURES if all(name in r for r in steady)}
    out.update(logged_windows=len(stats), steps=stats[-1].get("step") if stats else None,
               mfu=round(out["tflops_per_s"] / peak, 4) if peak and "tflops_per_s" in out else None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak = bf16_peak(gpu) if gpu else None
    stages = {}
    for name in STAGES:
        path = args.run_dir / "stages" / name / "stats.jsonl"
        if path.is_file():
            stats = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            stages[name] = stage_summary(stats, peak)
    metrics_path = args.run_dir / "eval" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    result = {
        "benchmark": "gpu_run", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu, "bf16_peak_tflops": peak, "torch": torch.__version__, "config": args.config,
        "overrides": args.overrides, "resolved": to_dict(load_config(args.config, args.overrides)),
        "complete": bool(metrics) and set(stages) == set(STAGES), "stages": stages,
        "metrics": {k: v["value"] for k, v in metrics["metrics"].items()} if metrics else None,
        "eval_protocol": {k: v for k, v in metrics["protocol"].items() if k != "eval_config"} if metrics else None,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("gpu", "complete", "stages")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
