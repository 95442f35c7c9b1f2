"""Smoke test of the evaluation benchmark: real 1- and 2-process evaluations, every figure reported by name."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "eval_throughput.py"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_quick_eval_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "eval.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())

    features = result["feature_extraction"]
    for name in ("images", "batch_size", "torch_threads", "ours_images_per_s", "ours_wall_s",
                 "torch_fidelity_images_per_s", "torch_fidelity_wall_s", "ratio_ours_over_torch_fidelity",
                 "inception_score_ours", "inception_score_torch_fidelity"):
        assert positive(features[name]), (name, features[name])
    assert "calculate_metrics" in features["compared"] and features["weights"].startswith("random")

    whole = result["whole_evaluation"]
    for processes in (1, 2):
        run = whole[f"processes_{processes}"]
        for name in ("wall_s", "trials", "generated_images", "trials_per_s", "generated_images_per_s",
                     "omp_num_threads"):
            assert positive(run[name]), (processes, name, run[name])
        assert "load_average_1min_before" in run and "load_average_1min_after" in run
    assert whole["processes_1"]["omp_num_threads"] == 2 and whole["processes_2"]["omp_num_threads"] == 1
    assert whole["processes_1"]["trials"] == whole["processes_2"]["trials"] == 4  # eval.max_trials=4
    assert positive(whole["speedup_2_over_1"])

    assert result["mode"] == "quick" and result["date"] and positive(result["machine"]["cpu_count"])
    assert "load_average_1min_at_start" in result["machine"]
    assert "images/s" in done.stdout and "speed-up" in done.stdout  # the human-readable table
