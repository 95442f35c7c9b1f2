"""One PNG per benchmark JSON, so a results folder can be read at a glance.

Why a tolerant design: the same plots serve full runs, ``--quick`` smoke runs and older result
files, whose keys differ (no 2-rank runs without a second GPU, no memory figures, ...). Every
panel is drawn by one function; when its data is missing the panel shows a note instead, and the
other panels still render. ``gpu_diffusion.py`` draws its own figure: it is copied, not redrawn.
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

from ..config import STAGES
from .summaries import cost_growth

MISSING = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)

Panel = tuple[str, Callable[[plt.Axes, dict], None]]


# ---- shared drawing ------------------------------------------------------------------------------

def _number(value) -> float:
    """A plottable float; missing figures become NaN (an absent bar) rather than an error."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _nonempty(items, what: str):
    if not items:
        raise ValueError(f"no {what}")
    return items


def _grouped_bars(ax: plt.Axes, groups: list[str], series: dict[str, list[float]],
                  errors: dict[str, list[float]] | None = None) -> None:
    """Bars of every series side by side within each group (NaN values leave a gap)."""
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        x = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(x, values, width, label=name, yerr=(errors or {}).get(name), capsize=3 if errors else 0)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.legend(fontsize=7)


def _draw(ax: plt.Axes, title: str, draw: Callable[[plt.Axes, dict], None], data: dict) -> None:
    """One panel; missing or malformed data gives a note in place of the panel, never a crash."""
    ax.set_title(title, fontsize=10)
    try:
        draw(ax, data)
    except MISSING as exc:
        ax.clear()
        ax.set_title(title, fontsize=10)
        ax.axis("off")
        note = textwrap.fill(f"not in this result file: {type(exc).__name__}: {exc}", 50)
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def _figure(data: dict, name: str, panels: list[Panel], path: Path) -> None:
    date = data.get("date") or data.get("environment", {}).get("date") or "undated"
    mode = " (quick smoke run: numbers meaningless)" if data.get("mode") == "quick" else ""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (title, draw) in zip(axes[0], panels, strict=True):
        _draw(ax, title, draw, data)
    fig.suptitle(f"{name}, {date}{mode}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- loader --------------------------------------------------------------------------------------

def _loader_throughput(ax: plt.Axes, data: dict) -> None:
    loaders = {"streaming": "streaming (WebDataset shards)", "baseline_published": "published-code style"}
    workers = _nonempty(sorted({w for key in loaders for w in data.get(key, {})}), "loader figures")
    _grouped_bars(ax, [w.replace("workers_", "") for w in workers],
                  {label: [_number(data.get(key, {}).get(w, {}).get("samples_per_s")) for w in workers]
                   for key, label in loaders.items()})
    ceiling = _number(data.get("decode_ceiling", {}).get("samples_per_s"))
    if not math.isnan(ceiling):
        ax.axhline(ceiling, color="black", linestyle="--", label="decode ceiling (bytes in memory)")
        ax.legend(fontsize=7)
    ax.set_xlabel("DataLoader num_workers")
    ax.set_ylabel("samples/s (one epoch)")


def _loader_memory(ax: plt.Axes, data: dict) -> None:
    sizes = _nonempty(sorted(data["memory"], key=int), "memory figures")
    _grouped_bars(ax, sizes, {label: [_number(data["memory"][s].get(f"{key}_peak_rss_mib")) for s in sizes]
                              for key, label in (("streaming", "streaming"), ("baseline", "published-code style"))})
    ax.set_xlabel("corpus size (samples)")
    ax.set_ylabel("peak RSS (MiB)")


def _loader_cost(ax: plt.Axes, data: dict) -> None:
    growth = cost_growth(data["corpora"], data["memory"])["sizes"]
    sizes = _nonempty(list(growth), "corpus sizes")
    _grouped_bars(ax, sizes, {label: [_number(growth[s][key]) for s in sizes]
                              for key, label in (("write_s_per_ksample", "write"), ("stream_s_per_ksample", "stream"))})
    ax.set_xlabel("corpus size (samples)")
    ax.set_ylabel("seconds per 1000 samples")


def plot_loader(data: dict, path: Path) -> None:
    _figure(data, "loader_throughput", [("samples/s per loader and worker count", _loader_throughput),
                                        ("memory: does it grow with the corpus?", _loader_memory),
                                        ("time per sample: linear in the corpus?", _loader_cost)], path)


# ---- training ------------------------------------------------------------------------------------

def _run_label(key: str, run: dict) -> str:
    """``ranks2_zero3_omp1`` → one part per line, so a dozen runs fit under their bars."""
    return key.replace("_", "\n") + ("\n(error)" if "error" in run else "")


def _train_throughput(ax: plt.Axes, data: dict) -> None:
    runs = _nonempty(data["runs"], "training runs")  # the script's order keeps ZeRO stages side by side
    _grouped_bars(ax, [_run_label(k, r) for k, r in runs.items()],
                  {stage: [_number(r.get(stage, {}).get("samples_per_s")) for r in runs.values()] for stage in STAGES})
    ax.set_yscale("log")
    ax.set_ylabel("samples/s (all ranks)")


def _train_scaling(ax: plt.Axes, data: dict) -> None:
    scaling = _nonempty(data["scaling_efficiency"], "1- and 2-rank run pairs")
    _grouped_bars(ax, list(STAGES), {key: [_number(by_stage.get(s)) for s in STAGES]
                                     for key, by_stage in scaling.items()})
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylabel("samples/s at 2 ranks / (2 x at 1 rank); 1 = linear")


def plot_train(data: dict, path: Path) -> None:
    _figure(data, "train_throughput", [("samples/s per stage and run (ranks, ZeRO stage)", _train_throughput),
                                       ("scaling efficiency, 1 → 2 ranks", _train_scaling)], path)


# ---- evaluation ----------------------------------------------------------------------------------

def _eval_features(ax: plt.Axes, data: dict) -> None:
    features = data["feature_extraction"]
    names = {"ours_images_per_s": "eeg2im_scale extract", "torch_fidelity_images_per_s": "torch-fidelity"}
    ax.bar(list(names.values()), [_number(features[key]) for key in names], color=["tab:blue", "tab:gray"])
    ax.set_ylabel("images/s (Inception features)")


def _eval_processes(ax: plt.Axes, data: dict) -> None:
    whole = data["whole_evaluation"]
    keys = _nonempty(sorted(k for k in whole if k.startswith("processes_")), "whole-evaluation runs")
    ax.bar([k.replace("processes_", "") for k in keys], [_number(whole[k]["generated_images_per_s"]) for k in keys])
    ax.set_xlabel(f"processes (speed-up 2 over 1: {_number(whole.get('speedup_2_over_1')):.2f})")
    ax.set_ylabel("generated images/s (whole evaluation)")


def plot_eval(data: dict, path: Path) -> None:
    _figure(data, "eval_throughput", [("feature extraction", _eval_features),
                                      ("whole evaluation over processes", _eval_processes)], path)


# ---- ablation ------------------------------------------------------------------------------------

def _ablation_metrics(ax: plt.Axes, data: dict) -> None:
    table = _nonempty({f"{method} {variant}": metrics for method, summary in data["summary"].items()
                       for variant, metrics in summary["metrics"].items()}, "variants")
    metrics = list(next(iter(table.values())))
    _grouped_bars(ax, [textwrap.fill(m.replace("_", " "), 12) for m in metrics],
                  {v: [_number(table[v][m]["mean"]) for m in metrics] for v in table},
                  {v: [_number(table[v][m]["std"]) if table[v][m]["std"] is not None else 0.0 for m in metrics]
                   for v in table})
    ax.set_ylabel("mean over seeds (error bars: std)")
    ax.set_xlabel(textwrap.fill(" ".join(f"{method}: {summary.get('verdict', '')}"
                                         for method, summary in data["summary"].items()), 90), fontsize=8)


def plot_ablation(data: dict, path: Path) -> None:
    _figure(data, "ablation", [("metric per conditioning variant", _ablation_metrics)], path)


# ---- every result file ---------------------------------------------------------------------------

PLOTTERS = {"loader_throughput": plot_loader, "train_throughput": plot_train, "eval_throughput": plot_eval,
            "ablation": plot_ablation}


def _copy_gpu_png(results: Path, out: Path) -> Path:
    source, target = results / "gpu_diffusion.png", out / "gpu_diffusion.png"
    if not source.is_file():
        raise FileNotFoundError(f"{source} missing: benchmarks/gpu_diffusion.py writes it beside its JSON")
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def plot_results(results: Path, out: Path) -> dict[str, dict]:
    """A PNG in ``out`` for every known ``<benchmark>.json`` in ``results``; name → {"png"} or {"error"}."""
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for name in [*PLOTTERS, "gpu_diffusion"]:
        source = results / f"{name}.json"
        if not source.is_file():
            continue
        try:
            if name == "gpu_diffusion":
                png = _copy_gpu_png(results, out)
            else:
                png = out / f"{name}.png"
                PLOTTERS[name](json.loads(source.read_text()), png)
            done[name] = {"png": str(png)}
        except (OSError, json.JSONDecodeError) as exc:
            done[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return done
