"""Smoke test of the loader benchmark: it runs end to end and reports every figure by name."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "loader_throughput.py"
WORKERS = ("workers_0", "workers_1", "workers_2")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_quick_loader_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "tmp.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work-dir", str(tmp_path / "tmp")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    for section in ("streaming", "baseline_published"):
        assert set(result[section]) == set(WORKERS)
        for figures in result[section].values():
            for name in ("samples_per_s", "mb_per_s", "steady_samples_per_s", "samples"):
                assert positive(figures[name]), (section, name, figures)
    ceiling = result["decode_ceiling"]
    for name in ("samples_per_s", "mb_per_s", "ratio_streaming_workers_0", "raw_bytes_in_memory"):
        assert positive(ceiling[name]), (name, ceiling)

    sizes = [str(s) for s in result["settings"]["sizes"]]
    assert len(sizes) == 2 and set(result["memory"]) == set(result["corpora"]) == set(sizes)
    for size in sizes:
        for name in ("streaming_peak_rss_mib", "baseline_peak_rss_mib"):
            assert positive(result["memory"][size][name]), (size, name)
        corpus = result["corpora"][size]
        assert corpus["num_samples"] == int(size)
        for name in ("bytes_on_disk", "baseline_published_bytes_on_disk", "synthesis_samples_per_s", "train_samples"):
            assert positive(corpus[name]), (size, name)

    assert positive(result["machine"]["cpu_count"]) and result["machine"]["torch"] and result["date"]
    assert "decode_ceiling" in done.stdout  # the human-readable summary was printed
