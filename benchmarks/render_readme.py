"""Render the README's benchmark tables from ``benchmarks/results/*.json``.

The README quotes measurements, never hand-typed numbers: this script replaces the block between
``<!-- BEGIN bench -->`` and ``<!-- END bench -->`` with tables built from whichever result files
exist.  ``python benchmarks/render_readme.py [--check]`` (``--check`` fails if the README is stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    out += ["", f"Streaming with 0 workers reaches {ceiling['ratio_streaming_workers_0']:.2f} of the decode ceiling "
                f"({ceiling['ratio_streaming_workers_0_steady']:.2f} in steady state).", ""]
    rows = [[f"{int(size):,}", f"{m['streaming_peak_rss_mib']:.0f}", f"{m['baseline_peak_rss_mib']:.0f}"]
            for size, m in sorted(data["memory"].items(), key=lambda kv: int(kv[0]))]
    out += _table(["corpus samples", "streaming peak RSS (MiB)", "published-style peak RSS (MiB)"], rows)
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
                f"{machine.get('load_average_1min_at_end')} at the end; 1×2 rows (one rank, two threads) stall on "
                "a loaded 2-core machine, so compare 2×1 with the 1×1 control rows."]
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
    return out + ["", f"The {whole['speedup_2_over_1']:.2f}× speed-up of 2 processes exceeds 2 because the "
                      "single 2-thread process stalls on the loaded shared machine (load average "
                      f"{one['load_average_1min_before']}); it is not a scaling figure.", ""]


SECTIONS = {"loader_throughput.json": loader_section, "train_throughput.json": train_section,
            "eval_throughput.json": eval_section}


def render() -> str:
    lines = []
    for name, section in SECTIONS.items():
        path = RESULTS / name
        if path.is_file():
            lines += section(json.loads(path.read_text()))
        else:
            lines += [f"*`{name}` not measured yet.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{render()}{END}{tail}"
    if args.check:
        return 0 if updated == text else 1
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
