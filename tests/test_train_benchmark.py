"""Smoke test of the training benchmark: real 1- and 2-rank DeepSpeed runs, every figure reported by name."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_throughput.py"
STAGES = ("teacher", "lowlevel", "highlevel", "diffusion")
FIGURES = ("samples_per_s", "step_time_s", "data_wait_s", "compute_s", "data_wait_fraction", "tflops_per_s",
           "peak_memory_mib", "wall_samples_per_s")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_quick_train_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "train.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())

    runs, expected = result["runs"], {"ranks1_zero2", "ranks2_zero2"}
    if result["machine"]["gpus"]:  # plus bf16 and attention runs; 2 ranks need 2 GPUs
        assert expected <= set(runs) | set(result["skipped"])
    else:
        assert set(runs) == expected and not result["skipped"]
    for key, run in runs.items():
        settings = run["settings"]
        assert settings["zero_stage"] == 2 and settings["ranks"] == int(key[5])
        assert positive(settings["omp_num_threads"]) and positive(settings["global_batch"])
        for stage in STAGES if settings["train_stage"] == "all" else [settings["train_stage"]]:
            for name in FIGURES:
                assert positive(run[stage][name]), (key, stage, name, run[stage])
            assert run[stage]["data_wait_fraction"] < 1
            assert run[stage]["steps_measured"] == 4  # 6 steps, windows of 2, the first discarded
    if expected <= set(runs):
        assert all(positive(result["scaling_efficiency"]["zero2"][s]) for s in STAGES)

    assert result["config"]["file"].endswith("tiny_train.yaml") and result["config"]["steps_per_stage"] == 6
    assert "train.zero_stage=2" in result["runs"]["ranks1_zero2"]["settings"]["overrides"]
    assert positive(result["machine"]["cpu_count"]) and "load_average_1min_at_start" in result["machine"]
    assert result["date"]
    assert "samples/s" in done.stdout and "ranks2_zero2" in done.stdout  # the human-readable table
