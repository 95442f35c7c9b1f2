"""Smoke tests of the benchmarks: each runs end to end in --quick mode and reports every figure by name.

No timing assertions: speeds are measured by the benchmarks themselves (JSON out), never as tests.
"""

import json
import subprocess
import sys
from pathlib import Path

from conftest import benchmark_module

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
WORKERS = ("workers_0", "workers_1", "workers_2")
STAGES = ("teacher", "lowlevel", "highlevel", "diffusion")
FIGURES = ("samples_per_s", "step_time_s", "data_wait_s", "compute_s", "data_wait_fraction", "tflops_per_s",
           "peak_memory_mib", "wall_samples_per_s")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def run_quick(script: str, tmp_path: Path, timeout: int = 600, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``benchmarks/<script> --quick [args]`` into ``tmp_path``; its JSON and the finished process."""
    out = tmp_path / "result.json"
    command = [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out), "--work-dir",
               str(tmp_path / "work"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done


def test_quick_loader_benchmark_reports_every_figure(tmp_path):
    result, done = run_quick("loader_throughput.py", tmp_path, timeout=300)

    for section in ("streaming", "baseline_published"):
        assert set(result[section]) == set(WORKERS)
        for figures in result[section].values():
            for name in ("samples_per_s", "mb_per_s", "steady_samples_per_s", "samples"):
                assert positive(figures[name]), (section, name, figures)
    ceiling = result["decode_ceiling"]
    for name in ("samples_per_s", "mb_per_s", "ratio_streaming_workers_0", "raw_bytes_in_memory"):
        assert positive(ceiling[name]), (name, ceiling)

    sizes = [str(s) for s in result["settings"]["sizes"]]
    assert len(sizes) == 3 and set(result["memory"]) == set(result["corpora"]) == set(sizes)
    growth = result["cost_growth"]
    assert list(growth["sizes"]) == sizes and [g["samples"] for g in growth["sizes"].values()] == [200, 300, 400]
    for name in ("write_s_per_ksample", "stream_s_per_ksample", "streaming_peak_rss_mib", "baseline_peak_rss_mib"):
        assert positive(growth["largest_over_smallest"][name]), name
    for size in sizes:
        for name in ("streaming_peak_rss_mib", "baseline_peak_rss_mib"):
            assert positive(result["memory"][size][name]), (size, name)
        corpus = result["corpora"][size]
        assert corpus["num_samples"] == int(size)
        for name in ("bytes_on_disk", "baseline_published_bytes_on_disk", "synthesis_samples_per_s", "train_samples"):
            assert positive(corpus[name]), (size, name)

    assert positive(result["machine"]["cpu_count"]) and result["machine"]["torch"] and result["date"]
    assert "decode_ceiling" in done.stdout  # the human-readable summary was printed


def test_quick_train_benchmark_reports_every_figure(tmp_path):
    result, done = run_quick("train_throughput.py", tmp_path)

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


def test_quick_eval_benchmark_reports_every_figure(tmp_path, tiny_release):
    result, done = run_quick("eval_throughput.py", tmp_path, 600, "--release", str(tiny_release))

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


def test_quick_ablation_benchmark_reports_every_variant_and_both_methods_configs(tmp_path):
    """One method trained and evaluated (the other runs the same code with two overrides: both
    methods' resolved configs are compared without training)."""
    result, done = run_quick("ablation.py", tmp_path, 600, "--methods", "ours")

    methods = ("paper", "ours")
    variants = ("multilevel", "highlevel_only", "lowlevel_only")
    metrics = ("eeg_top1", "generated_n_way_top_k", "colour_hist_distance", "hue_emd", "hue_error",
               "saturation_error", "brightness_error")
    assert result["mode"] == "quick" and result["complete"] and result["settings"]["seeds"] == [0]
    assert result["environment"]["date"] and result["environment"]["torch"] and result["environment"]["deepspeed"]
    ablation = benchmark_module("ablation")
    plan = ablation.Plan(seeds=[0], nproc=1, work_dir=tmp_path / "work", quick=True, user_overrides=[])
    differences = ablation.config_differences(plan, Path(result["settings"]["corpus"]["root"]))
    assert differences["model.diffusion.condition_on"] == {
        f"{m}/{v}": c for m in methods for v, c in zip(variants, ("multilevel", "highlevel", "lowlevel"))}
    for head in ("colour_layout_weight", "colour_distribution_weight"):  # the paper's encoder has no colour heads
        assert {run: w > 0 for run, w in differences[f"model.lowlevel.{head}"].items()} == {
            f"{m}/{v}": m == "ours" for m in methods for v in variants}
    assert result["configs"]["differences"] == {  # the report's: the method it ran
        key: {run: value for run, value in runs.items() if run.startswith("ours/")} for key, runs in differences.items()
        if len({json.dumps(v) for run, v in runs.items() if run.startswith("ours/")}) > 1}
    assert set(result["runs"]) == set(result["summary"]) == {"ours"}
    runs = result["runs"]["ours"]["seed0"]
    assert set(runs) == set(variants)
    for variant, run in runs.items():
        assert "error" not in run, (variant, run)
        assert run["method"] == "ours" and run["train_stage"] == ("all" if variant == "multilevel" else "diffusion")
        assert "/ours/seed0/" in run["run_dir"]
        assert positive(run["train_wall_s"]) and positive(run["eval_wall_s"])
        assert run["eval_protocol"]["split"] == "test" and run["eval_protocol"]["trials"] == 6
        for name in metrics:
            assert 0 <= run["metrics"][name] <= 1, (variant, name, run["metrics"])
    teacher = runs["multilevel"]["teacher"]
    assert 0 <= teacher["test_n_way_top_k"] <= 1 and 0 <= teacher["val_accuracy"] <= 1
    assert teacher["test_images"] == 6

    summary = result["summary"]["ours"]
    for variant in variants:
        for name in metrics:
            figures = summary["metrics"][variant][name]
            assert figures["n"] == 1 and figures["std"] is None and set(figures["per_seed"]) == {"seed0"}
    assert summary["eeg_top1_identical_within_seed"] is True  # the encoders are shared within a seed
    for name in ("colour_hist_distance", "hue_emd", "hue_error", "saturation_error", "brightness_error"):
        assert summary["paired_multilevel_minus_highlevel_only"][name]["seeds"] == 1
    assert summary["verdict"].startswith("multilevel beats highlevel_only on colour fidelity: inconclusive")
    assert summary["verdict"] in done.stdout  # the human-readable summary

    # --resume keeps every evaluated run of the same mode, corpus and config: nothing is retrained
    out = tmp_path / "result.json"
    again = subprocess.run([sys.executable, str(BENCHMARKS / "ablation.py"), "--quick", "--resume", "--methods", "ours",
                            "--out", str(out), "--work-dir", str(tmp_path / "work")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("kept from") == 3 and "training" not in again.stderr
    assert json.loads(out.read_text())["runs"] == result["runs"]


def test_bench_all_quick_runs_the_registry_and_plots(tmp_path):
    """The one entry point: a selected benchmark runs as a subprocess, its output streams through,
    and its JSON, PNG, log and summary record land in --out. Only the loader: the fastest quick mode
    (~20 s; the others take 1.5-3.5 min here), the rest of the path is the same for every script."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "eeg2im_scale.bench", "all", "--quick", "--only", "loader_throughput",
               "--out", str(out), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((out / "bench_summary.json").read_text())
    assert summary["quick"] is True and summary["failed"] == []
    [record] = summary["benchmarks"]
    assert record["name"] == "loader_throughput" and record["status"] == "ok" and record["exit_code"] == 0
    assert positive(record["wall_s"]) and "--quick" in record["command"]
    assert "decode_ceiling" in json.loads((out / "loader_throughput.json").read_text())
    assert summary["plots"] == {"loader_throughput": {"png": str(out / "loader_throughput.png")}}
    assert (out / "loader_throughput.png").read_bytes().startswith(b"\x89PNG")
    assert "decode_ceiling" in (out / "logs" / "loader_throughput.log").read_text()
    assert "decode_ceiling" in done.stdout  # the script's own output streamed through


def test_bench_plots_draws_one_png_per_committed_result(tmp_path):
    from eeg2im_scale.bench.__main__ import main
    from eeg2im_scale.bench.plots import PLOTTERS

    results = BENCHMARKS / "results"
    assert main(["plots", "--results", str(results), "--out", str(tmp_path)]) == 0
    names = {p.stem for p in results.glob("*.json")} & {*PLOTTERS, "gpu_diffusion"}  # not bench_summary.json
    assert {"loader_throughput", "train_throughput", "eval_throughput", "gpu_diffusion"} <= names
    for name in names:
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name



def test_cost_growth_is_per_sample_time_and_memory_relative_to_the_smallest_corpus():
    from eeg2im_scale.bench.summaries import cost_growth

    corpora = {"1000": {"num_samples": 1000, "synthesis_seconds": 2.0},
               "4000": {"num_samples": 4000, "synthesis_seconds": 10.0}}
    memory = {"4000": {"streaming_seconds": 3.0, "streaming_samples": 3000, "streaming_peak_rss_mib": 100,
                       "baseline_peak_rss_mib": 400},
              "1000": {"streaming_seconds": 0.8, "streaming_samples": 800, "streaming_peak_rss_mib": 100,
                       "baseline_peak_rss_mib": 100}}
    growth = cost_growth(corpora, memory)
    assert list(growth["sizes"]) == ["1000", "4000"]
    assert growth["sizes"]["4000"]["write_s_per_ksample"] == 2.5 and growth["sizes"]["1000"]["stream_s_per_ksample"] == 1
    assert growth["largest_over_smallest"] == {"write_s_per_ksample": 1.25, "stream_s_per_ksample": 1.0,
                                               "streaming_peak_rss_mib": 1.0, "baseline_peak_rss_mib": 4.0}


def test_quick_remote_stream_benchmark_compares_every_source_with_local(tmp_path):
    result, done = run_quick("remote_stream.py", tmp_path, timeout=300)
    assert set(result["results"]) == {"0", "2"}
    for rows in result["results"].values():
        assert set(rows) == {"local", "http", "http_cache_cold", "http_cache_warm"}
        samples = {r["samples"] for r in rows.values()}
        assert len(samples) == 1 and positive(samples.pop())  # every source delivered the same epoch
        assert all(positive(r["samples_per_s"]) and positive(r["mb_per_s"]) for r in rows.values())
        assert rows["local"]["fraction_of_local"] == 1.0
    assert positive(result["machine"]["cpu_count"]) and "of local" in done.stdout  # the summary was printed


def test_the_remote_benchmarks_http_source_streams_and_only_the_cached_sources_use_a_cache(tmp_path):
    configs = benchmark_module("remote_stream").source_configs(tmp_path / "corpus", "http://127.0.0.1:1/corpus", 2, 64,
                                                               tmp_path / "cache")
    assert configs["local"].root == str(tmp_path / "corpus") and configs["local"].cache_dir is None
    assert configs["http"].root == "http://127.0.0.1:1/corpus" and configs["http"].cache_dir is None  # streamed
    assert configs["http_cache_cold"] == configs["http_cache_warm"] and configs["http_cache_warm"].cache_dir


def test_quick_manifest_scale_benchmark_reports_write_and_start_costs_per_size(tmp_path):
    result, done = run_quick("manifest_scale.py", tmp_path, timeout=600)
    sizes = [str(s) for s in result["settings"]["sizes"]]
    assert list(result["results"]) == sizes and len(sizes) == 3
    for size in sizes:
        row = result["results"][size]
        for name in ("seconds", "us_per_sample", "peak_rss_mib"):
            assert positive(row["write"][name]), (size, name)
        assert positive(row["start"]["build_s"]) and 0.7 * int(size) < row["start"]["train_samples"] < int(size)
        assert positive(row["manifest_bytes"])
    assert set(result["largest_over_smallest"]) == {"samples", "write_seconds", "write_peak_rss_growth",
                                                    "start_seconds", "start_peak_rss_growth"}
    assert "largest/smallest" in done.stdout


def test_quick_encoders_benchmark_scores_a_classic_and_a_foundation_backbone_by_image(tmp_path):
    result, done = run_quick("encoders.py", tmp_path, timeout=300)
    rows = result["rows"]
    assert set(rows) == {"EEGNet", "Labram"} and result["mode"] == "quick"
    assert {r["family"] for r in rows.values()} == {"classic", "foundation"}
    corpus = result["settings"]["corpus"]
    assert result["settings"]["split_by"] == "image" and corpus["images_disjoint"] and corpus["test_images"] > 0
    for key, row in rows.items():
        assert "error" not in row, (key, row)
        assert row["init"] == "random" and positive(row["params"]) and row["backbone_params"] < row["params"]
        assert 0 <= row["eeg_top1"] <= 1 and row["eeg_top1"] == row["correct"] / row["trials"]
        counts = row["test_label_counts"]
        assert sum(counts) == row["trials"] and row["chance"] == max(1 / len(counts), max(counts) / sum(counts))
        assert 0 < row["p_value"] <= 1 and positive(row["samples_per_s"])
        assert row["throughput"]["steps_measured"] == 4  # 6 steps, windows of 2, the first discarded
        assert f"model.highlevel.backbone={key}" in row["overrides"]
        sweep = row["lr_sweep"]  # selected on val, the first of a tie; test scored for that run only
        assert set(sweep) == {"0.003", "0.001"} and all(0 <= run["val_top1"] <= 1 for run in sweep.values())
        best = max(sweep, key=lambda lr: sweep[lr]["val_top1"])
        assert row["selected_lr"] == float(best) and f"train.highlevel.lr={row['selected_lr']}" in row["overrides"]
    assert rows["EEGNet"]["input"]["adapted"] is False
    labram = rows["Labram"]["input"]
    assert labram["adapted"] and labram["sfreq"]["to"] == 200.0 and labram["channels"]["renamed"]["A1"] == "CZ"
    assert rows["EEGNet"]["test_label_counts"] == rows["Labram"]["test_label_counts"]  # same corpus and split
    assert positive(result["machine"]["cpu_count"]) and "samples/s" in done.stdout

    render = benchmark_module("render_readme").render  # the README section: optional, rendered from this JSON
    assert "EEG encoders" not in render(tmp_path / "work")
    results = tmp_path / "results"
    results.mkdir()
    (results / "encoders.json").write_text(json.dumps(result))
    table = render(results)
    assert "| `Labram` | foundation |" in table and "250→200 Hz" in table and "| `EEGNet` | classic |" in table
    assert f"| {rows['EEGNet']['selected_lr']:g} (" in table  # the selected learning rate and its val top-1
