"""What a release fixes about its evaluation, and model selection on the validation split.

A release records the data it was trained on (``corpus.json``: split scheme, class subset, EEG
window, band-pass, z-score statistics). Evaluating it on another scheme would test it on trials it
trained on, so the evaluator takes these from the release and refuses a config that names
different ones. ``eeg2im tune`` sweeps sampler settings on ``val`` with the evaluator itself and
records the choice in the release (``selection.json``), which ``eeg2im evaluate`` then uses on test.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import Config, ConfigError, DataConfig, DiffusionConfig, EvalConfig, TuneConfig
from .metric_info import better

log = logging.getLogger(__name__)

SELECTION = "selection.json"
NO_SELECTION = "none: model defaults (no eeg2im tune run)"


def _release_data(corpus: dict) -> dict:
    subset = corpus.get("class_subset")
    return {
        "split_by": corpus["split_by"],
        "classes": list(subset["class_names"]) if subset else None,
        "eeg_window": list(corpus["eeg_window"]) if corpus["eeg_window"] else None,
        "bandpass": list(corpus["bandpass"]) if corpus["bandpass"] else None,
        "normalize": bool(corpus["normalize"]),
    }


def _show(value) -> str:
    """A value as an override would write it."""
    return value if isinstance(value, str) else json.dumps(value)


def release_data(data: DataConfig, corpus: dict, source: str | Path, given: set[str] | None = None) -> DataConfig:
    """``data`` with the split scheme, class subset, EEG window, band-pass and normalisation of
    the release whose ``corpus.json`` is ``corpus`` (read from ``source``).

    A value of ``data`` that differs from the release's is an error when it was given: named in
    the config file or an override (``given``: their dotted keys), or always when ``given`` is
    None (a Config built in code). Values nobody set are simply replaced by the release's."""
    values = _release_data(corpus)
    for name, value in values.items():
        key = f"data.{name}"
        mine = getattr(data, name)
        mine = list(mine) if isinstance(mine, tuple) else mine
        if mine != value and (given is None or key in given):
            raise ConfigError(f"{key}={_show(mine)} contradicts the release ({_show(value)}, from {source}): "
                              f"drop the setting or pass {key}={_show(value)}")
    return replace(data, **{k: tuple(v) if k in ("eeg_window", "bandpass") and v else v for k, v in values.items()})


def check_corpus(manifest, corpus: dict, source: str | Path) -> None:
    """The corpus at ``data.root`` must be the one the release was trained on (classes and EEG shape)."""
    shape = (len(corpus["channel_names"]), int(corpus["time_points"]))
    if manifest.class_names != corpus["class_names"] or tuple(manifest.eeg_shape) != shape:
        raise ConfigError(f"data.root={manifest.root}: its classes {manifest.class_names[:8]} and EEG shape "
                          f"{tuple(manifest.eeg_shape)} are not those of the release ({corpus['class_names'][:8]}, "
                          f"{shape}, from {source}): point data.root at the corpus the model was trained on")


def read_selection(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / SELECTION
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class SamplerSettings:
    """How evaluation samples: what ``eeg2im tune`` selects."""

    sampler: str
    steps: int
    guidance: float


def sampler_settings(eval_cfg: EvalConfig, diffusion_cfg: DiffusionConfig,
                     selection: dict | None) -> tuple[SamplerSettings, dict | str]:
    """(settings, provenance): explicit ``eval.*`` settings win, then the release's selection on
    val, then the model's defaults; the provenance goes into metrics.json."""
    explicit = {"sampler": eval_cfg.sampler, "sample_steps": eval_cfg.sample_steps,
                "guidance_scale": eval_cfg.guidance_scale}
    chosen = (selection or {}).get("selected", {})
    defaults = {"sampler": diffusion_cfg.sampler, "sample_steps": diffusion_cfg.sample_steps,
                "guidance_scale": diffusion_cfg.guidance_scale}
    settings = {k: v if v is not None else chosen.get(k, defaults[k]) for k, v in explicit.items()}
    overridden = [f"eval.{k}" for k, v in explicit.items() if v is not None]
    if selection is None:
        provenance = NO_SELECTION + (f"; set by {', '.join(overridden)}" if overridden else "")
    else:
        provenance = {key: selection[key] for key in ("split", "criterion", "better", "trials", "date", "selected")}
        provenance["source"] = f"eeg2im tune ({SELECTION} of the release)"
        provenance["overridden_by"] = overridden  # explicit eval.* settings used instead of the selected ones
    return SamplerSettings(settings["sampler"], settings["sample_steps"], settings["guidance_scale"]), provenance


def candidates(tune_cfg: TuneConfig) -> list[dict]:
    """The sweep's grid, in a fixed order (ties go to the earliest candidate)."""
    return [{"sampler": sampler, "sample_steps": steps, "guidance_scale": guidance} for sampler, steps, guidance
            in itertools.product(tune_cfg.samplers, tune_cfg.sample_steps, tune_cfg.guidance_scales)]


def best(scores: list[float], better: str) -> int:
    """Index of the best score (the first of equals)."""
    sign = 1 if better == "higher" else -1
    return max(range(len(scores)), key=lambda i: (sign * scores[i], -i))


def tune(cfg: Config, model_dir: str | Path, given: set[str] | None = None) -> dict:
    """Evaluate every candidate of ``cfg.tune`` on the val split with the evaluator (no files
    written), pick the best by ``tune.metric`` and write ``selection.json`` into the release (main
    process). Every process returns the selection."""
    from accelerate import PartialState

    from .evaluator import evaluate

    if cfg.eval.split != "val":
        raise ConfigError(f"eeg2im tune selects on the validation split only; eval.split={cfg.eval.split} is "
                          "refused (test is reported once, by eeg2im evaluate)")
    metric = cfg.tune.metric
    grid, rows = candidates(cfg.tune), []
    for i, settings in enumerate(grid):
        run = replace(cfg, eval=replace(cfg.eval, max_trials=cfg.tune.max_trials, **settings))
        metrics = evaluate(run, model_dir, given=given, write=False)
        values = {name: entry["value"] for name, entry in metrics["metrics"].items()}
        if metric not in values:
            raise ConfigError(f"tune.metric={metric} is not computed for this release and config "
                              f"(computed: {', '.join(values)})")
        score = values[metric]["mean"] if isinstance(values[metric], dict) else values[metric]
        rows.append({**settings, "score": score, "metrics": values})
        log.info("tune %d/%d %s: %s = %.4f", i + 1, len(grid), settings, metric, score)
    chosen = rows[best([r["score"] for r in rows], better(metric))]
    protocol = metrics["protocol"]  # the same split, scheme and trials for every candidate
    selection = {
        "split": "val", "split_by": protocol["split_by"], "trials": protocol["trials"],
        "images_per_trial": cfg.eval.images_per_trial, "seed": cfg.eval.seed,
        "criterion": metric, "better": better(metric),
        "selected": {k: chosen[k] for k in ("sampler", "sample_steps", "guidance_scale")}, "score": chosen["score"],
        "candidates": rows, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    state = PartialState()
    if state.is_main_process:
        path = Path(model_dir) / SELECTION
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(selection, indent=1))
        tmp.replace(path)
        log.info("selected %s on val (%s = %.4f, %s is better): %s", selection["selected"], metric,
                 chosen["score"], better(metric), path)
    state.wait_for_everyone()
    return selection
