"""Render the README's benchmark tables from ``benchmarks/results/*.json``.

The README quotes measurements, never hand-typed numbers: this script replaces the block between
``<!-- BEGIN bench -->`` and ``<!-- END bench -->`` with tables built from whichever result files
exist.  ``python benchmarks/render_readme.py [--check]`` (``--check`` fails if the README is stale).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from eeg2im_scale.bench.summaries import cost_growth
from eeg2im_scale.eval.metric_info import display_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- BEGIN bench -->", "<!-- END bench -->"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def loader_section(data: dict) -> list[str]:
    settings = data["settings"]
    out = [f"**Loader** (`loader_throughput.json`, {data['date'][:10]}): {settings['channels']}×"
           f"{settings['time_points']} float16 EEG + {settings['image_size']}² PNG per sample, batch "
           f"{settings['batch_size']}, train split of a {settings['throughput_corpus_samples']}-sample corpus; "
           f"samples/s over a whole epoch (steady state in brackets).", ""]
    rows = []
    for name, label in [("streaming", "eeg2im_scale streaming (WebDataset)"),
                        ("baseline_published", "published-code style (torch.load + per-image files)")]:
        for key, fig in sorted(data[name].items()):
            rows.append([label, key.split("_")[1], f"{fig['samples_per_s']:.0f} ({fig['steady_samples_per_s']:.0f})",
                         f"{fig['mb_per_s']:.0f}"])
    ceiling = data["decode_ceiling"]
    rows.append(["pure decode ceiling (bytes in memory, 1 process)", "–", f"{ceiling['samples_per_s']:.0f}",
                 f"{ceiling['mb_per_s']:.0f}"])
    out += _table(["loader", "workers", "samples/s", "MB/s"], rows)
    if "ratio_streaming_workers_0" in ceiling:  # measured only when 0 workers were
        rounds = ceiling.get("ratio_each_round")
        out += ["", f"Streaming with 0 workers reaches {ceiling['ratio_streaming_workers_0']:.2f} of the decode "
                    f"ceiling ({ceiling['ratio_streaming_workers_0_steady']:.2f} in steady state)"
                    + (f"; all rows were timed in alternating rounds, and round by round the ratio was "
                       f"{', '.join(f'{r:.2f}' for r in rounds)}" if rounds else "") + "."]
    out += [""]
    growth = cost_growth(data["corpora"], data["memory"])
    rows = [[f"{g['samples']:,}", f"{g['write_s_per_ksample']:.1f}", f"{g['stream_s_per_ksample']:.2f}",
             f"{g['streaming_peak_rss_mib']:.0f}", f"{g['baseline_peak_rss_mib']:.0f}"] for g in growth["sizes"].values()]
    ratio = growth["largest_over_smallest"]
    rows.append(["largest / smallest", f"×{ratio['write_s_per_ksample']:.2f}", f"×{ratio['stream_s_per_ksample']:.2f}",
                 f"×{ratio['streaming_peak_rss_mib']:.2f}", f"×{ratio['baseline_peak_rss_mib']:.2f}"])
    out += ["Cost growth with the corpus (time per 1000 samples stays flat when cost is linear):", ""]
    out += _table(["corpus samples", "write s / 1k", "stream s / 1k", "streaming peak RSS (MiB)",
                   "published-style peak RSS (MiB)"], rows)
    return out + [""]


def train_section(data: dict) -> list[str]:
    config = data["config"]
    out = [f"**Training** (`train_throughput.json`, {data['date'][:10]}, config `{config['file']}`, "
           f"{config['steps_per_stage']} steps per stage, first logging window discarded): global samples/s, "
           "mean step time, data-wait share of the step, the loop's achieved-TFLOP/s estimate, peak RSS "
           "(CPU ranks, gloo; ranks × threads per rank).", ""]
    rows = []
    for result in data["runs"].values():
        settings = result["settings"]
        label = f"{settings['ranks']}×{settings['omp_num_threads']} ZeRO-{settings['zero_stage']} {settings['precision']}"
        for stage in ("teacher", "lowlevel", "highlevel", "diffusion"):
            fig = result[stage]
            rows.append([label, stage, f"{fig['samples_per_s']:.1f}", f"{fig['step_time_s']:.3f}",
                         f"{100 * fig['data_wait_fraction']:.1f} %", f"{fig['tflops_per_s']:.4f}",
                         f"{fig['peak_memory_mib']:.0f}"])
    out += _table(["run", "stage", "samples/s", "step s", "data wait", "TFLOP/s", "peak MiB"], rows)
    machine = data["machine"]
    out += ["", f"Load average on the shared machine: {machine.get('load_average_1min_at_start')} at the start, "
                f"{machine.get('load_average_1min_at_end')} at the end. Compare 2×1 rows with the 1×1 control rows "
                "(one thread per rank in both): a 1×2 row (one rank, two threads) stalls whenever the shared "
                "2-core machine is loaded."]
    efficiency = data.get("scaling_efficiency", {})
    if efficiency:
        out += ["", "Scaling efficiency, 2 ranks vs 1 (samples/s at 2 ÷ twice samples/s at 1; `_omp1`: the 1-rank "
                    "run also at 1 thread, the like-for-like comparison on a shared 2-core machine):", ""]
        keys = sorted(efficiency)
        stages = list(efficiency[keys[0]])
        out += _table(["stage", *keys], [[s, *(f"{efficiency[k][s]:.2f}" for k in keys)] for s in stages])
    return out + [""]


def eval_section(data: dict) -> list[str]:
    fx, whole = data["feature_extraction"], data["whole_evaluation"]
    one, two = whole["processes_1"], whole["processes_2"]
    out = [f"**Evaluation** (`eval_throughput.json`, {data['date'][:10]}): FID-Inception feature extraction on "
           f"{fx['images']} uint8 {fx['image_size']}² images (batch {fx['batch_size']}, {fx['torch_threads']} threads; "
           "random weights offline, same network and weights for both), and a whole evaluation of a tiny release "
           f"({one['trials']} trials, {one['generated_images']} generated images, wall time from process start).", ""]
    out += _table(["measurement", "value"], [
        ["feature extraction, eeg2im_scale", f"{fx['ours_images_per_s']:.1f} images/s"],
        ["feature extraction, torch-fidelity", f"{fx['torch_fidelity_images_per_s']:.1f} images/s"],
        [f"whole evaluation, 1 process × {one['omp_num_threads']} threads", f"{one['wall_s']:.1f} s "
         f"({one['generated_images_per_s']:.2f} generated images/s)"],
        [f"whole evaluation, 2 processes × {two['omp_num_threads']} thread", f"{two['wall_s']:.1f} s "
         f"({two['generated_images_per_s']:.2f} generated images/s)"],
        ["same FID with 1 and 2 processes", str(whole["same_fid_1_and_2_processes"])],
    ])
    speedup = whole["speedup_2_over_1"]
    if speedup > 2:
        why = (f"The {speedup:.2f}× speed-up of 2 processes exceeds 2 because the single 2-thread process stalls "
               f"on the loaded shared machine (load average {one['load_average_1min_before']})")
    else:
        why = (f"2 processes ran at {speedup:.2f}× the speed of one 2-thread process on the same 2 cores (load "
               f"average {one['load_average_1min_before']}): the wall time includes interpreter start-up, imports "
               "and model loading, which each process pays, for an evaluation this small")
    return out + ["", why + "; it is not a scaling figure.", ""]


ENGINE_LABELS = {"plain": "plain PyTorch", "ddp": "DDP", "zero0": "ZeRO-0", "zero1": "ZeRO-1", "zero2": "ZeRO-2",
                 "zero3": "ZeRO-3"}
ATTENTION_LABELS = {"naive": "naive bmm-softmax-bmm", "xformers": "xformers", "sdpa": "SDPA"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _order(key: str, order: list[str]) -> tuple[int, str]:
    return (order.index(key) if key in order else len(order), key)


def _gpu_config(row: dict) -> tuple:
    return row["image_size"], row["engine"], bool(row["compile"]), row["attention"]


def _gpu_label(config: tuple) -> str:
    _, engine, compiled, attention = config
    return (f"{ENGINE_LABELS.get(engine, engine)}, {ATTENTION_LABELS.get(attention, attention)}, "
            + ("torch.compile" if compiled else "eager"))


def _gpu_reason(row: dict) -> str:
    """A short reason for a row without numbers ('out of memory at batch 64, 32, 16, 8')."""
    error = str(row.get("error") or row.get("status"))
    if error.startswith("OutOfMemoryError"):
        tried = list(row.get("oom_at_batch") or [])
        tried.append(tried[-1] // 2 if tried else row["batch_size"])  # the batch whose failure is the recorded error
        return "out of memory at batch " + ", ".join(str(b) for b in tried)
    if row.get("status") == "skipped":
        return "not measured: " + error
    first = error.splitlines()[0] if error else "failed"
    return first if len(first) <= 100 else first[:97] + "..."


def _gpu_configurations(results: list[dict]) -> dict:
    """Configuration -> {'ok': rows with numbers, 'failed': rows without}; a configuration measured at a
    fallback batch (after an OOM) stays one configuration (its batch is shown)."""
    configs: dict = {}
    for row in results:
        entry = configs.setdefault(_gpu_config(row), {"ok": [], "failed": []})
        entry["ok" if row.get("samples_per_s") is not None else "failed"].append(row)
    return configs


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def gpu_section(data: dict) -> list[str]:
    env, model, method, flops = data["environment"], data["model"], data["method"], data["flops"]
    runs = data.get("runs") or [{"run": 0, "environment": env}]
    gpus = sorted({r.get("gpu") or r.get("environment", {}).get("gpu") or env.get("gpu") or env.get("device", "?")
                   for r in runs})
    matmul = [r["environment"]["measured_bf16_matmul_tflops"] for r in runs
              if r.get("environment", {}).get("measured_bf16_matmul_tflops") is not None]
    if not matmul and env.get("measured_bf16_matmul_tflops") is not None:
        matmul = [env["measured_bf16_matmul_tflops"]]
    matmul_text = (f"{min(matmul):.0f}–{max(matmul):.0f}" if matmul and min(matmul) != max(matmul)
                   else f"{matmul[0]:.0f}" if matmul else None)
    peak = env.get("bf16_dense_peak_tflops")
    mfu_text = (f"MFU = TFLOP/s ÷ {peak:.0f} TFLOP/s (dense bf16 datasheet peak"
                + (f"; a measured 8192³ bf16 matmul reached {matmul_text} TFLOP/s)" if matmul_text else ")")
                if peak else "MFU not computed (no bf16 peak known for this device)")
    parameters = sorted({f["parameters"] for f in flops.values()})
    levels = model.get("attention_levels")
    attention_at = (", self-attention at levels " + ", ".join(str(i + 1) for i, on in enumerate(levels) if on)
                    if levels else "")
    sizes = sorted(int(s) for s in flops)
    gflops = ", ".join(f"{flops[str(s)]['training_gflops_per_sample']:.0f} GFLOP at {s} px" for s in sizes)
    out = [f"**GPU diffusion UNet** (`gpu_diffusion.json`, {env['date'][:10]}, {_plural(len(runs), 'run')}): "
           f"one training step of the diffusion stage's FiLM UNet alone on one {' / '.join(gpus)}, "
           f"torch {env['torch']}, DeepSpeed {env['deepspeed']}. Model from `{model['config']}`: "
           + " / ".join(f"{p / 1e6:.1f} M" for p in parameters) + " parameters, block channels "
           f"{tuple(model['block_channels'])}, {model['layers_per_block']} layers per block{attention_at}, "
           f"conditioning {model['cond_dim']}-d. Inputs: {method['data']}; nothing is loaded "
           f"from disk. Precision bf16. Plain PyTorch and DDP rows: {method['precision_plain']}. DeepSpeed rows: "
           f"{method['precision_deepspeed']}. "
           f"{method['timed_steps']} timed steps after {method['warmup_steps_discarded']} warm-up steps (which hold "
           f"torch.compile's compilation); TFLOP/s = samples/s × training FLOPs per sample ({gflops}, the "
           f"same count for every attention backend); {mfu_text}; peak GiB = "
           "`max_memory_allocated` (weights + optimizer state + activations). "
           + (f"Engines: {method['engines']}. " if method.get("engines") else "") +
           "Configurations measured in several runs show the mean with the range and count.", ""]
    if method.get("quick"):
        out += ["*Smoke-test numbers (`--quick`: CPU, tiny model, 2 steps), not a GPU measurement.*", ""]
    configs = _gpu_configurations(data["results"])
    engines = list(ENGINE_LABELS)
    attentions = list(ATTENTION_LABELS)
    for size in sorted({c[0] for c in configs}):
        keys = sorted((c for c in configs if c[0] == size),
                      key=lambda c: (_order(c[1], engines), c[2], _order(c[3], attentions)))
        rows = []
        for key in keys:
            ok, failed = configs[key]["ok"], configs[key]["failed"]
            if not ok:
                rows.append([_gpu_label(key), failed[-1]["batch_size"], "–", "–", "–", "–",
                             "; ".join(dict.fromkeys(_gpu_reason(r) for r in failed))])
                continue
            speed = f"{_mean(ok, 'samples_per_s'):.1f}"
            if len(ok) > 1:
                speed += (f" ({min(r['samples_per_s'] for r in ok):.1f}–{max(r['samples_per_s'] for r in ok):.1f}, "
                          f"{len(ok)} runs)")
            notes = [f"OOM at batch {', '.join(str(b) for b in oom)}" for oom in
                     dict.fromkeys(tuple(r["oom_at_batch"]) for r in ok if r.get("oom_at_batch"))]
            notes += ["NaN loss" for r in ok[:1] if any(r.get("status") == "nan_loss" for r in ok)]
            batches = sorted({r["batch_size"] for r in ok})
            mfu = _mean(ok, "mfu") if all(r.get("mfu") is not None for r in ok) else None
            rows.append([_gpu_label(key), "/".join(str(b) for b in batches), speed, f"{_mean(ok, 'tflops'):.1f}",
                         "–" if mfu is None else f"{100 * mfu:.1f} %", f"{_mean(ok, 'peak_mem_mib') / 1024:.1f}",
                         "; ".join(notes)])
        out += [f"{size} px:", ""]
        out += _table(["configuration", "batch", "samples/s", "TFLOP/s", "MFU", "peak GiB", "note"], rows)
        out.append("")
    sentences = _gpu_sentences(configs, sorted({c[0] for c in configs}))
    incomplete = [f"run {r['run']} was cut short ({r['incomplete']})" for r in runs if r.get("incomplete")]
    if incomplete:
        sentences.append("Not every configuration was measured: " + "; ".join(incomplete) + ".")
    return out + [" ".join(sentences), ""]


def _gpu_speed(configs: dict, key: tuple) -> float | None:
    ok = configs.get(key, {}).get("ok")
    return _mean(ok, "samples_per_s") if ok else None


def _gpu_sentences(configs: dict, sizes: list[int]) -> list[str]:
    sentences = []
    # fastest eager attention backend (plain PyTorch) at each size
    parts = []
    for size in sizes:
        eager = {c[3]: _gpu_speed(configs, c) for c in configs if c[:3] == (size, "plain", False)}
        measured = {k: v for k, v in eager.items() if v is not None}
        if not measured:
            continue
        best = max(measured, key=measured.get)

        def batch(attention: str, size: int = size) -> set:
            return {r["batch_size"] for r in configs[(size, "plain", False, attention)]["ok"]}

        others = [f"{ATTENTION_LABELS.get(k, k)} {measured[best] / v:.2f}× slower"
                  + (f" (at batch {'/'.join(str(b) for b in sorted(batch(k)))})" if batch(k) != batch(best) else "")
                  for k, v in sorted(measured.items(), key=lambda kv: -kv[1]) if k != best]
        others += [f"{ATTENTION_LABELS.get(k, k)} failed "
                   f"({_gpu_reason(configs[(size, 'plain', False, k)]['failed'][-1])})"
                   for k, v in eager.items() if v is None]
        parts.append(f"{ATTENTION_LABELS.get(best, best)} at {size} px ({measured[best]:.1f} samples/s"
                     + (f"; {', '.join(others)}" if others else "") + ")")
    if parts:
        sentences.append("Fastest eager attention backend: " + "; ".join(parts) + ".")
    # torch.compile speed-up over the same configuration eager
    parts = []
    for key in sorted((c for c in configs if c[2]), key=lambda c: (c[0], c[1], c[3])):
        compiled, eager = _gpu_speed(configs, key), _gpu_speed(configs, (key[0], key[1], False, key[3]))
        if compiled is not None and eager is not None:
            parts.append(f"{compiled / eager:.2f}× ({ENGINE_LABELS.get(key[1], key[1])}, "
                         f"{ATTENTION_LABELS.get(key[3], key[3])}, {key[0]} px)")
    if parts:
        sentences.append("torch.compile speed-up over the same configuration eager: " + ", ".join(parts) + ".")
    # DeepSpeed ZeRO vs DDP (eager, SDPA)
    parts = []
    for size in sizes:
        ddp = _gpu_speed(configs, (size, "ddp", False, "sdpa"))
        if ddp is None:
            continue
        ratios = [f"{ENGINE_LABELS[e]} {speed / ddp:.2f}×" for e in ("zero1", "zero2", "zero3")
                  if (speed := _gpu_speed(configs, (size, e, False, "sdpa"))) is not None]
        if ratios:
            parts.append(f"{size} px: " + ", ".join(ratios))
    if parts:
        sentences.append("DeepSpeed ZeRO samples/s relative to DDP (eager SDPA, means over runs): "
                         + "; ".join(parts) + ".")
    return sentences


# the evaluator's names for its metrics (eval/metric_info.py), so the README, the report and metrics.json agree
ABLATION_COLUMNS = [("eeg_top1", display_name("eeg_top1")),
                    ("generated_n_way_top_k", display_name("generated_n_way_top_k").replace(" n-way top-k", "")),
                    ("teacher", "teacher on real images"),
                    ("colour_hist_distance", "1 − " + display_name("hist_intersection")),
                    *((key, display_name(key)) for key in ("hue_error", "saturation_error", "brightness_error"))]


def _mean_std(stats: dict) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    spread = f" ± {stats['std']:.3f}" if stats.get("std") is not None else ""
    return f"{stats['mean']:.3f}{spread}"


def ablation_section(data: dict) -> list[str]:
    settings = data["settings"]
    seeds = settings["seeds"]
    runs = [r for by_seed in data["runs"].values() for rs in by_seed.values() for r in rs.values()]
    protocol = next((r["eval_protocol"] for r in runs if "eval_protocol" in r), {})
    steps = settings.get("steps_per_stage", {})
    chance = next((s.get("teacher_chance") for s in data["summary"].values() if s.get("teacher_chance")), None)
    out = [f"**Conditioning ablation** (`ablation.json`, {data['environment']['date'][:10]}): the diffusion UNet "
           "conditioned on multi-level EEG features (`multilevel`), on the high-level embedding only "
           "(`highlevel_only`) or on the low-level latent only (`lowlevel_only`), for each method: `paper` (the "
           "low-level encoder aligned with the autoencoder latent only, as the paper describes it) and `ours` "
           "(plus two colour heads on the low-level EEG latent). Within a method and seed the three variants "
           "share the teacher and EEG encoders, so EEG top-1 and the teacher's accuracy are equal across its rows. "
           f"Mean ± std (ddof 1) over {_plural(len(seeds), 'seed')} ({', '.join(str(s) for s in seeds)}); "
           + (f"{settings['eval_test_trials']} test trials, " if "eval_test_trials" in settings else "")
           + (f"{protocol['n_way']}-way top-{protocol['top_k']} accuracy" if protocol else "accuracy")
           + (f" (chance {chance:.3f})" if chance is not None else "")
           + (f", steps per stage {'/'.join(str(v) for v in steps.values())} ({'/'.join(steps)})" if steps else "")
           + "; lower is better for the colour metrics.", ""]
    if data.get("mode") == "quick":
        out += ["*Smoke-test numbers (`--quick` mode): they only show that the pipeline runs end to end, not a "
                "result.*", ""]
    if not data.get("complete", True):
        out += ["*Incomplete: the run was interrupted; the table holds the finished runs only.*", ""]
    out += [f"*{note}*" for note in data.get("provenance", [])] + ([""] if data.get("provenance") else [])
    rows = []
    for method, summary in data["summary"].items():
        teacher = summary.get("teacher_test_accuracy", {})
        for variant, metrics in summary["metrics"].items():
            cells = []
            for key, _ in ABLATION_COLUMNS:
                stats = teacher if key == "teacher" else metrics.get(key, {})
                cell = _mean_std(stats)
                if stats.get("n") is not None and stats["n"] != len(seeds):
                    cell += f" (n={stats['n']})"
                cells.append(cell)
            rows.append([f"`{method}`", f"`{variant}`", *cells])
    out += _table(["method", "variant", *(label for _, label in ABLATION_COLUMNS)], rows)
    errors = [f"{r.get('method', '')} seed {r['seed']} {r['variant']}: {r['error']}" for r in runs if "error" in r]
    if errors:
        out += ["", "Failed runs: " + "; ".join(errors) + "."]
    for method, summary in data["summary"].items():
        out += ["", f"Verdict (`{method}`): {summary['verdict']}"]
    return out + [""]


def remote_section(data: dict) -> list[str]:
    settings, synth = data["settings"], data["settings"]["synth"]
    out = [f"**Remote streaming** (`remote_stream.json`, {data['date'][:10]}): one training epoch of a "
           f"{synth['num_samples']}-sample corpus ({synth['channels']}×{synth['time_points']} EEG, "
           f"{synth['image_size']} px images, {synth['samples_per_shard']} samples per shard) read from local disk "
           f"and from {settings['server']} (`data.root=http://...`), streamed or through the shard cache "
           f"(`data.cache_dir`: the first epoch fills it, the next reads it); median of {settings['rounds']} "
           "rounds, sources alternating within a round; the fraction of local is the median of the ratios within a "
           "round (their range in brackets). Loopback has no network latency: the fraction is the cost of the remote "
           f"code path, not of a network. Load average on the shared 2-core machine "
           f"{data['machine'].get('load_average_1min_at_start')} at the start, "
           f"{data['machine'].get('load_average_1min_at_end')} at the end; cores: {settings.get('cores', 'shared')} "
           "(on one machine the server would otherwise take the loader's cores; on a cluster it is another host). "
           "The shard cache reads at local speed from the second epoch.", ""]
    if data.get("mode") == "quick":
        out += ["*Smoke-test numbers (`--quick`): they only show that the benchmark runs.*", ""]
    labels = {"local": "local disk", "http": "HTTP, streamed", "http_cache_cold": "HTTP, filling the cache",
              "http_cache_warm": "HTTP, from the cache"}
    def fraction(r: dict) -> str:
        low, high = r.get("fraction_of_local_range", (None, None))
        return f"{r['fraction_of_local']:.2f}" + (f" ({low:.2f}–{high:.2f})" if low not in (None, high) else "")

    rows = [[workers, labels[source], f"{r['samples_per_s']:.0f}", f"{r['mb_per_s']:.1f}", fraction(r)]
            for workers, by_source in data["results"].items() for source, r in by_source.items()]
    return out + _table(["workers", "source", "samples/s", "MB/s", "fraction of local"], rows) + [""]


def manifest_scale_section(data: dict) -> list[str]:
    settings, growth = data["settings"], data["largest_over_smallest"]
    out = [f"**Cost growth to {max(settings['sizes']):,} samples** (`manifest_scale.json`, {data['date'][:10]}): "
           f"writing a corpus (shards, manifest, split columns, channel statistics; {settings['writer_processes']} "
           f"writer processes) and starting a loader on it (manifest read, split membership, shard list, first "
           f"batch), each in a fresh process; tiny samples ({settings['eeg']}, {settings['image']}), so the figures "
           "are the bookkeeping that grows with the sample count. RSS growth is over the process's RSS after its "
           "imports.", ""]
    if data.get("mode") == "quick":
        out += ["*Smoke-test numbers (`--quick`): they only show that the benchmark runs.*", ""]
    rows = [[f"{int(size):,}", f"{r['write']['seconds']:.1f}", f"{r['write']['us_per_sample']:.0f}",
             f"{r['write']['peak_rss_growth_mib']:.0f}", f"{r['start']['build_s'] + r['start']['first_batch_s']:.2f}",
             f"{r['start']['peak_rss_growth_mib']:.0f}", f"{r['manifest_bytes'] / 2**20:.1f}"]
            for size, r in data["results"].items()]
    out += _table(["samples", "write s", "write µs/sample", "write RSS growth MiB", "loader start s",
                   "loader RSS growth MiB", "manifest MiB"], rows)
    return out + ["", f"From the smallest to the largest ({growth['samples']:.0f}× the samples): writing took "
                      f"{growth['write_seconds']}× the time, loader start-up {growth['start_seconds']}× and its RSS "
                      f"growth {growth['start_peak_rss_growth']}×; the writer's RSS growth {growth['write_peak_rss_growth']}×.",
                  ""]


CHANNELS_PASSED = {"position": "channels by position", "forward": "channels by name (per batch)",
                   "chs_info": "channels by name (constructor)"}


def _adaptation(record: dict) -> str:
    """What the input adapter did, in one cell ('as is' for a backbone without an input spec)."""
    if not record["adapted"]:
        return "as is"
    sfreq, times, channels = record["sfreq"], record["n_times"], record["channels"]
    parts = [f"{sfreq['from']:g}→{sfreq['to']:g} Hz" if sfreq["from"] != sfreq["to"] else f"{sfreq['to']:g} Hz",
             f"{times['from']}→{times['to']} samples ({times['length']})",
             CHANNELS_PASSED[channels["passed_as"]]
             + (f", {len(channels['renamed'])} renamed" if channels["renamed"] else "")]
    return "; ".join(parts)


def encoders_section(data: dict) -> list[str]:
    settings, corpus = data["settings"], data["settings"]["corpus"]
    out = [f"**EEG encoders** (`encoders.json`, {data['date'][:10]}): the high-level encoder's backbone varied on a "
           f"{corpus['num_samples']}-sample synthetic corpus ({corpus['num_classes']} classes, {corpus['channels']}×"
           f"{corpus['time_points']} EEG at {corpus['sfreq']:g} Hz, class SNR {corpus['class_snr']}), by-image split "
           f"({corpus['test_images']} test images, none trained on). Method: {data['method']}; "
           f"{settings['teacher_steps']} teacher steps once, {settings['highlevel_steps']} highlevel steps per "
           f"backbone and learning rate ({', '.join(f'{lr:g}' for lr in settings['lrs'])}; {settings['selection']}), "
           f"batch {settings['batch_size']}, seed {settings['seed']}, one rank on "
           f"{data['machine']['torch_threads']} CPU threads. Foundation models at a small size (`backbone_kwargs` in "
           f"the JSON), {settings['weights']}.", ""]
    if data.get("mode") == "quick":
        out += ["*Smoke-test numbers (`--quick`): they only show that the benchmark runs.*", ""]
    rows = []
    for key, row in data["rows"].items():
        if "error" in row:
            rows.append([f"`{key}`", row["family"], "–", "–", "–", "–", "–", "–", f"failed: {row['error'][:80]}"])
            continue
        rows.append([f"`{key}`", row["family"] + ("" if row["init"] == "random" else ", pretrained"),
                     f"{row['params']:,}",
                     f"{row['selected_lr']:g} ({row['lr_sweep'][format(row['selected_lr'], 'g')]['val_top1']:.3f})",
                     f"{row['eeg_top1']:.3f} ({row['correct']}/{row['trials']})",
                     f"{row['chance']:.3f}", f"{row['p_value']:.2g}", f"{row['samples_per_s']:.1f}",
                     _adaptation(row["input"])])
    return out + _table(["backbone", "family", "params", "lr (val top-1)", "EEG top-1", "chance", "p", "samples/s",
                         "input adaptation"],
                        rows) + [""]


SECTIONS = {"loader_throughput.json": loader_section, "train_throughput.json": train_section,
            "eval_throughput.json": eval_section, "gpu_diffusion.json": gpu_section,
            "remote_stream.json": remote_section, "manifest_scale.json": manifest_scale_section}
# rendered only when the file exists (no placeholder while it does not)
OPTIONAL_SECTIONS = {"ablation.json": ablation_section, "encoders.json": encoders_section}


def render(results: Path = RESULTS) -> str:
    lines = []
    for name, section in {**SECTIONS, **OPTIONAL_SECTIONS}.items():
        path = results / name
        if path.is_file():
            lines += section(json.loads(path.read_text()))
        elif name in SECTIONS:
            lines += [f"*`{name}` not measured yet.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the result JSONs (default benchmarks/results)")
    args = parser.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{render(args.results)}{END}{tail}"
    if args.check:
        return 0 if updated == text else 1
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
