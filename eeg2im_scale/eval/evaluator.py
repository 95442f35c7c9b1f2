"""Distributed evaluation of a released EEG2IM model, Accelerate-launched.

Each process reads a disjoint share of the split's shards (our own loader, split by process:
never handed to ``accelerator.prepare``, whose batch dispatching hangs on iterable datasets),
classifies the EEG, generates images, and extracts Inception features. Per-trial records, each
carrying its own feature and logit rows, are gathered with Accelerate's ``gather_object`` and
sorted by trial key before any metric: gathered rows arrive in process order, and IS (splits), KID
(subsets) and n-way accuracy (draws) depend on row order. Generation noise is seeded per trial, so
the numbers do not depend on how many processes share the work. The real reference set holds each
stimulus once (by ``image_id``), however many trials showed it.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm import tqdm

from ..config import Config, EvalConfig
from ..data.loader import EEGImageLoader
from ..models.autoencoder import from_unit_range
from ..models.pipeline import EEG2IMPipeline, model_card
from ..models.sampling import sample
from . import fidelity, reconstruction
from .gen_metrics import FeatureStats, fid_from_stats, inception_score, kid
from .inception import extract, load_fid_inception, random_fid_inception
from .metric_info import METRICS, display_name
from .selection import SamplerSettings, check_corpus, read_selection, release_data, sampler_settings

log = logging.getLogger(__name__)



def _inception(eval_cfg: EvalConfig, device: torch.device):
    if not eval_cfg.inception_metrics:
        log.info("eval.inception_metrics=false: IS, FID and KID are skipped")
        return None
    if eval_cfg.random_inception:
        log.warning("eval.random_inception: FID/IS/KID use a RANDOMLY INITIALISED Inception (tests only); "
                    "the numbers are not comparable to published ones")
        return random_fid_inception(device, seed=eval_cfg.seed)
    return load_fid_inception(eval_cfg.inception_weights, device)


def _reconstruction_networks(eval_cfg: EvalConfig, device: torch.device):
    """The networks of the requested reconstruction metrics, and those that cannot be computed here (with why)."""
    cfg = eval_cfg.reconstruction
    if cfg.random_networks:
        log.warning("eval.reconstruction.random_networks: the reconstruction table uses RANDOMLY INITIALISED networks "
                    "(tests only); the numbers are not comparable to published ones")
    networks, unavailable = reconstruction.load_networks(cfg.metrics, cfg, device, seed=eval_cfg.seed)
    for metric, reason in unavailable.items():
        log.warning("reconstruction metric %s not computed: %s", metric, reason)
    return networks, unavailable


def _distinct_reals(records: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Every process's distinct stimuli's 2-way features, by image id, on every process: the real side of 2-way
    identification is each distinct stimulus once, whichever process saw it."""
    local: dict[str, dict[str, np.ndarray]] = {}
    for record in records:
        real = record["reconstruction"]["real"]
        local.setdefault(record["image_id"], {m: real[m] for m in reconstruction.TWO_WAY if m in real})
    merged: dict[str, dict[str, np.ndarray]] = {}
    for image_id, features in gather_object(sorted(local.items(), key=lambda item: item[0])):
        merged.setdefault(image_id, features)
    return merged


def _generators(keys: list[str], per_trial: int, seed: int, device: torch.device) -> list[torch.Generator]:
    """One generator per generated image, seeded by (seed, trial, image): process-count independent."""
    return [torch.Generator(device).manual_seed(seed * 1_000_003 + int(key) * 1009 + j)
            for key in keys for j in range(per_trial)]


def evaluate(cfg: Config, model_dir: str | Path, out_dir: str | Path | None = None, *,
             given: set[str] | None = None, write: bool = True) -> dict:
    """Evaluate ``model_dir`` on ``cfg.eval.split``; the main process writes metrics.json,
    per_subject.csv and grid.png into ``out_dir`` (default: ``eval/`` in the model's run directory) unless
    ``write`` is false (``eeg2im tune``), and every process returns the metrics. The data's split scheme,
    classes and EEG preprocessing are the release's; ``given`` (the dotted keys the user set, None: all)
    decides which differing config values are errors (selection.release_data)."""
    state = PartialState()
    device = state.device
    pipeline = EEG2IMPipeline(model_dir, device=device)
    eval_cfg = cfg.eval
    inception = _inception(eval_cfg, device)
    networks, unavailable = _reconstruction_networks(eval_cfg, device)
    settings, selection = sampler_settings(eval_cfg, pipeline.cfg.model.diffusion, read_selection(model_dir))
    data_cfg = replace(release_data(cfg.data, pipeline.corpus, pipeline.dir / "corpus.json", given),
                       batch_size=eval_cfg.batch_size, image_size=pipeline.corpus["image_size"])
    loader = EEGImageLoader(data_cfg, eval_cfg.split, train=False, rank=state.process_index,
                            world_size=state.num_processes,
                            preprocess=pipeline.preprocess)  # the release's window, band-pass and z-score statistics
    check_corpus(loader.manifest, pipeline.corpus, pipeline.dir / "corpus.json")
    selected, grid_keys, split_trials = _selected_keys(loader, eval_cfg.max_trials, eval_cfg.grid_trials)
    records, grid = [], {}
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", unit="batch", disable=None if state.is_main_process else True):
            keep = [i for i, k in enumerate(batch["key"]) if k in selected]
            if not keep:
                continue
            batch = {k: (v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep]) for k, v in batch.items()}
            generated = _generate(pipeline, batch["eeg"].to(device), batch["key"], eval_cfg, settings)
            records += _trial_records(pipeline, inception, batch, generated, eval_cfg.images_per_trial,
                                      networks, eval_cfg.reconstruction.metrics)
            grid.update(_grid_rows(batch, generated, eval_cfg.images_per_trial, grid_keys))
        reconstruction.two_way_rows(records, _distinct_reals(records))
        records = gather_object(records)
        reference = None
        if inception is not None and eval_cfg.reference == "class_images":
            classes = {r["label"] for r in records}
            reference = _class_reference(inception, data_cfg, classes, state)
    grid_items = gather_object(list(grid.items()))
    metrics = _summarise(eval_cfg, data_cfg.split_by, pipeline, records, reference, settings,
                         {m: net.weights for net in networks.values() for m in net.spec.nodes.values()}, unavailable)
    partial = len(selected) < split_trials
    metrics["protocol"].update(model_selection=selection, split_trials=split_trials, partial=partial)
    if write and state.is_main_process:
        release_eval = Path(model_dir).parent / "eval"
        out = Path(out_dir) if out_dir else release_eval
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        _write_per_subject(out / "per_subject.csv", records, eval_cfg, metrics["protocol"]["n_way"])
        _write_grid(out / "grid.png", dict(grid_items), pipeline.corpus["class_names"])
        if partial:
            log.warning("partial evaluation: %d of the %s split's %d trials (eval.max_trials=%d)", len(selected),
                        eval_cfg.split, split_trials, eval_cfg.max_trials)
        why_not = card_unchanged_because(eval_cfg, partial, out, release_eval)
        if why_not:
            log.info("model card of %s left unchanged: %s", model_dir, why_not)
        else:
            (Path(model_dir) / "README.md").write_text(model_card(pipeline.cfg, pipeline.corpus, metrics))
        log.info("evaluation written to %s", out)
    state.wait_for_everyone()
    return metrics


def card_unchanged_because(eval_cfg: EvalConfig, partial: bool, out: Path, release_eval: Path) -> str | None:
    """Why this evaluation must not rewrite the release's model card, or None: only a complete evaluation
    with real networks, written into the release's own eval folder, speaks for the release."""
    if partial:
        return "a partial evaluation (eval.max_trials)"
    if eval_cfg.inception_metrics and eval_cfg.random_inception:
        return "a random-weight Inception (eval.random_inception, tests only)"
    if eval_cfg.reconstruction.random_networks and set(eval_cfg.reconstruction.metrics) - {"pixcorr", "ssim"}:
        return "random-weight reconstruction networks (eval.reconstruction.random_networks, tests only)"
    if eval_cfg.split != "test":
        return f"an evaluation of the {eval_cfg.split} split"
    if out.resolve() != release_eval.resolve():
        return f"written to {out}, not the release's own {release_eval}"
    return None


def _class_reference(inception, data_cfg, classes: set[int], state: PartialState) -> dict[str, np.ndarray]:
    """``eval.reference: class_images``: pool3 features of every distinct image of the evaluated classes in
    the corpus (all splits, training images included), each process reading a disjoint share of the shards."""
    features: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        loader = EEGImageLoader(data_cfg, split, train=False, rank=state.process_index, world_size=state.num_processes)
        for batch in tqdm(loader, desc=f"reference images ({split})", unit="batch",
                          disable=None if state.is_main_process else True):
            rows = [i for i, (image_id, label) in enumerate(zip(batch["image_id"], batch["label"].tolist()))
                    if label in classes and image_id not in features]
            rows = list({batch["image_id"][i]: i for i in reversed(rows)}.values())  # one row per image
            if rows:
                feat, _ = extract(inception, batch["image"][rows].to(state.device))
                features.update(zip((batch["image_id"][i] for i in rows), feat.float().cpu().numpy()))
    merged: dict[str, np.ndarray] = {}
    for image_id, feat in gather_object(sorted(features.items(), key=lambda item: item[0])):
        merged.setdefault(image_id, feat)
    return merged


def _selected_keys(loader: EEGImageLoader, max_trials: int, grid_trials: int) -> tuple[set[str], set[str], int]:
    """The split's trials to evaluate (all, or the first ``max_trials`` keys), those shown in the grid
    (the first trial of each of the first ``grid_trials`` images) and the split's trial count; the
    same on every process."""
    member = loader.manifest.membership(loader.cfg.split_by, loader.split)  # any scheme, class subsets included
    rows = sorted((r["key"], r["image_id"]) for r in loader.manifest.read(["index", "key", "image_id"]).to_pylist()
                  if member[r["index"]])
    split_trials = len(rows)
    rows = rows[:max_trials] if max_trials else rows
    first_of_image: dict[str, str] = {}
    for key, image_id in rows:
        first_of_image.setdefault(image_id, key)
    return {key for key, _ in rows}, set(sorted(first_of_image.values())[:grid_trials]), split_trials


def _generate(pipeline, eeg: torch.Tensor, keys: list[str], eval_cfg: EvalConfig,
              settings: SamplerSettings) -> torch.Tensor:
    """``eval.images_per_trial`` uint8 images per trial, trial-major, each from its own seeded generator."""
    n = eval_cfg.images_per_trial
    cond = pipeline.condition(eeg).repeat_interleave(n, dim=0)
    generators = _generators(keys, n, eval_cfg.seed, eeg.device)
    return from_unit_range(sample(pipeline.unet, cond, settings.sampler, settings.steps, settings.guidance,
                                  pipeline.corpus["image_size"], generators))


HUE_BINS = 36
ATTRIBUTES = ("hue", "saturation", "brightness")


def _colour_descriptors(pipeline, batch: dict, generated: torch.Tensor, real: torch.Tensor) -> dict:
    """Small per-image colour summaries, kept in the records so that chance levels can pair a
    generated image with another trial's stimulus after gathering: HSV and hue histograms of the
    generated and true images, and (synthetic corpora) the recovered and recorded attributes."""
    out = {"fake_hsv": fidelity.hsv_histograms(generated), "real_hsv": fidelity.hsv_histograms(real),
           "fake_hue": fidelity.hue_histogram(generated, HUE_BINS), "real_hue": fidelity.hue_histogram(real, HUE_BINS)}
    names = pipeline.corpus.get("attribute_names") or []
    if "attributes" in batch and set(ATTRIBUTES) <= set(names):
        found = fidelity.dominant_colour(generated)
        out["recovered"] = torch.stack([found[a] for a in ATTRIBUTES], dim=1)
        out["recorded"] = torch.stack([batch["attributes"][:, names.index(a)].float() for a in ATTRIBUTES], dim=1)
    return out


def _pair_fidelity(colour: dict, generated: torch.Tensor, real: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Per generated image, its fidelity to its own trial's stimulus (and recorded attributes)."""
    real_repeated = real.repeat_interleave(n, dim=0)
    pair = {
        "hist_intersection": fidelity.histogram_intersection(colour["fake_hsv"],
                                                             colour["real_hsv"].repeat_interleave(n, dim=0)),
        "hue_emd": fidelity.hue_histogram_emd(colour["fake_hue"], colour["real_hue"].repeat_interleave(n, dim=0)),
        "ssim": fidelity.ssim(generated, real_repeated),
        "pixel_correlation": fidelity.pixel_correlation(generated, real_repeated),
    }
    if "recovered" in colour:
        recorded = colour["recorded"].to(generated.device).repeat_interleave(n, dim=0)
        errors = fidelity.attribute_differences(dict(zip(ATTRIBUTES, colour["recovered"].unbind(1))),
                                                dict(zip(ATTRIBUTES, recorded.unbind(1))))
        pair.update({f"{k}_error": v for k, v in errors.items()})
    return pair


def _trial_records(pipeline, inception, batch: dict, generated: torch.Tensor, n: int, networks: dict,
                   recon_metrics: list[str]) -> list[dict]:
    """One record per trial, carrying its own rows of every per-image array, so that sorting the
    gathered records keeps each trial's features, logits and fidelity values together."""
    real = batch["image"].to(generated.device)
    if inception is not None:  # float32 rows: the network's own precision, half the memory of float64
        real_feat = extract(inception, real)[0].float().cpu().numpy()
        fake_feat, fake_logit = (x.float().cpu().numpy() for x in extract(inception, generated))
    eeg_logits = pipeline.highlevel(batch["eeg"].to(generated.device))["logits"]
    teacher_logits, _ = pipeline.teacher(generated)
    real_teacher_logits, _ = pipeline.teacher(real)
    colour = _colour_descriptors(pipeline, batch, generated, real)
    pair = _pair_fidelity(colour, generated, real, n)
    top5 = eeg_logits.topk(min(5, eeg_logits.shape[1]), dim=1).indices.cpu()
    recon = reconstruction.trial_entries(networks, recon_metrics, real, generated, n)
    records = []
    for i, key in enumerate(batch["key"]):
        label = int(batch["label"][i])
        rows = slice(i * n, (i + 1) * n)
        records.append({
            "key": key, "image_id": batch["image_id"][i], "subject": int(batch["subject"][i]), "label": label,
            "eeg_top1": bool(top5[i, 0] == label), "eeg_top5": bool((top5[i] == label).any()),
            "teacher_logits": teacher_logits[rows].double().cpu().numpy(),
            "real_teacher_logits": real_teacher_logits[i:i + 1].double().cpu().numpy(),
            **{name: [float(v) for v in values[rows]] for name, values in pair.items()},
            "colour": {"fake_hsv": colour["fake_hsv"][rows].cpu().numpy(), "real_hsv": colour["real_hsv"][i].cpu().numpy(),
                       "fake_hue": colour["fake_hue"][rows].cpu().numpy(), "real_hue": colour["real_hue"][i].cpu().numpy(),
                       **({"recovered": colour["recovered"][rows].cpu().numpy(),
                           "recorded": colour["recorded"][i].cpu().numpy()} if "recovered" in colour else {})},
            "reconstruction": recon[i],
        })
        if inception is not None:
            records[-1].update(fake_features=fake_feat[rows], fake_logits=fake_logit[rows], real_features=real_feat[i])
    return records


def _grid_rows(batch: dict, generated: torch.Tensor, n: int, grid_keys: set[str]) -> dict:
    """The grid's rows among this batch's trials: key -> (true image, its generations, label)."""
    return {key: (batch["image"][i].permute(1, 2, 0).numpy(),
                  generated[i * n:(i + 1) * n].permute(0, 2, 3, 1).cpu().numpy(), int(batch["label"][i]))
            for i, key in enumerate(batch["key"]) if key in grid_keys}


def reference_features(records: list[dict], reference: dict[str, np.ndarray] | None) -> np.ndarray:
    """The real reference set: ``reference`` (``class_images``, by image id) or each distinct stimulus of
    ``records`` once (the first trial of its ``image_id`` in key order), rows in image-id order."""
    if reference is None:
        reference = {}
        for record in records:
            reference.setdefault(record["image_id"], record["real_features"])
    return np.stack([reference[image_id] for image_id in sorted(reference)]).astype(np.float64)


def _summarise(eval_cfg: EvalConfig, split_by: str, pipeline, records: list[dict],
               reference: dict[str, np.ndarray] | None, settings: SamplerSettings,
               recon_weights: dict[str, str], recon_unavailable: dict[str, str]) -> dict:
    """Every metric from the gathered records, sorted by trial key first: nothing depends on which
    process evaluated which trial, or in which order the processes' rows were gathered."""
    records = sorted(records, key=lambda r: r["key"])
    num_classes = len(pipeline.corpus["class_names"])
    n_way = eval_cfg.n_way or num_classes
    labels = torch.tensor([r["label"] for r in records for _ in range(eval_cfg.images_per_trial)])
    teacher = torch.from_numpy(np.concatenate([r["teacher_logits"] for r in records]))
    real_teacher = torch.from_numpy(np.concatenate([r["real_teacher_logits"] for r in records]))
    real_labels = torch.tensor([r["label"] for r in records])
    values = {
        "eeg_top1": float(np.mean([r["eeg_top1"] for r in records])),
        "eeg_top5": float(np.mean([r["eeg_top5"] for r in records])),
        "generated_n_way_top_k": fidelity.n_way_topk_accuracy(teacher, labels, n_way, eval_cfg.top_k, trials=10, seed=eval_cfg.seed),
        "real_n_way_top_k": fidelity.n_way_topk_accuracy(real_teacher, real_labels, n_way, eval_cfg.top_k, trials=10,
                                                         seed=eval_cfg.seed),
    }
    real_images = len({r["image_id"] for r in records})
    if eval_cfg.inception_metrics:
        fake_features = np.concatenate([r["fake_features"] for r in records]).astype(np.float64)
        fake_logits = np.concatenate([r["fake_logits"] for r in records]).astype(np.float64)
        real_features = reference_features(records, reference)
        real_images = len(real_features)
        is_mean, is_std = inception_score(torch.from_numpy(fake_logits), splits=eval_cfg.is_splits)
        kid_mean, kid_std = kid(torch.from_numpy(fake_features), torch.from_numpy(real_features),
                                subsets=eval_cfg.kid_subsets, subset_size=eval_cfg.kid_subset_size, seed=eval_cfg.seed)
        dim = real_features.shape[1]
        fid = fid_from_stats(FeatureStats(dim).update(torch.from_numpy(real_features)),
                             FeatureStats(dim).update(torch.from_numpy(fake_features)))
        values.update({"inception_score": {"mean": is_mean, "std": is_std}, "fid": fid,
                       "kid": {"mean": kid_mean, "std": kid_std}})
    for name in ("hist_intersection", "hue_emd", "ssim", "pixel_correlation", "hue_error", "saturation_error",
                 "brightness_error"):
        if records and name in records[0]:
            values[name] = float(np.mean([v for r in records for v in r[name]]))
    chance = chance_levels(records, n_way, eval_cfg.top_k)
    recon_values, recon_chance = reconstruction.summarise(records)
    values.update({f"recon_{m}": v for m, v in recon_values.items()})
    chance.update({f"recon_{m}": v for m, v in recon_chance.items()})
    table = {key: {"value": value, "name": display_name(key, n_way, eval_cfg.top_k),
                   "definition": METRICS[key].definition, "better": METRICS[key].better,
                   "chance": chance.get(key), "chance_rule": METRICS[key].chance}
             for key, value in values.items()}
    for metric in recon_values:
        table[f"recon_{metric}"]["weights"] = recon_weights.get(metric, "none (no network)")
    return {
        "metrics": table,
        "protocol": {
            "split": eval_cfg.split, "split_by": split_by, "trials": len(records),
            "images_per_trial": eval_cfg.images_per_trial, "generated_images": len(labels),
            "distinct_stimuli": len({r["image_id"] for r in records}), "real_images": real_images,
            "reference": REFERENCES[eval_cfg.reference] if eval_cfg.inception_metrics else None,
            "sampler": settings.sampler, "sample_steps": settings.steps,
            "guidance_scale": settings.guidance, "inception": _inception_protocol(eval_cfg),
            "image_preprocessing": IMAGE_PREPROCESSING,
            "inception_input": "uint8 → 299×299 TF-compatible bilinear",
            "n_way": n_way, "top_k": eval_cfg.top_k,
            "reconstruction": {"follows": reconstruction.FOLLOWS, "not_computed": {
                **{f"recon_{m}": reason for m, reason in recon_unavailable.items()},
                **{f"recon_{m}": "fewer than 2 distinct stimuli" for m in eval_cfg.reconstruction.metrics
                   if m in reconstruction.TWO_WAY and m not in recon_unavailable and m not in recon_values}}},
            "eval_config": asdict(eval_cfg),
        },
    }


def chance_levels(records: list[dict], n_way: int, top_k: int) -> dict[str, float]:
    """Each metric's chance level from the key-sorted records (the rules in ``metric_info``):
    the best constant guess for EEG accuracy, top_k / n_way for the teacher's judgement, and for
    the colour measures the same measure between each generated image and another trial's
    stimulus. Metrics without a computable chance level are absent."""
    if not records:
        return {}
    counts = sorted(Counter(r["label"] for r in records).values(), reverse=True)
    chance = {"eeg_top1": counts[0] / len(records), "eeg_top5": sum(counts[:5]) / len(records),
              "generated_n_way_top_k": top_k / n_way, "real_n_way_top_k": top_k / n_way}
    partners = fidelity.mismatched_partners([r["image_id"] for r in records])
    pairs = [(r["colour"], records[p]["colour"]) for r, p in zip(records, partners) if p is not None and "colour" in r]
    if not pairs:
        return chance
    fake_hsv = torch.from_numpy(np.concatenate([own["fake_hsv"] for own, _ in pairs]))
    other_hsv = torch.from_numpy(np.concatenate([np.repeat(other["real_hsv"][None], len(own["fake_hsv"]), 0)
                                                 for own, other in pairs]))
    fake_hue = torch.from_numpy(np.concatenate([own["fake_hue"] for own, _ in pairs]))
    other_hue = torch.from_numpy(np.concatenate([np.repeat(other["real_hue"][None], len(own["fake_hue"]), 0)
                                                 for own, other in pairs]))
    chance["hist_intersection"] = float(fidelity.histogram_intersection(fake_hsv, other_hsv).mean())
    chance["hue_emd"] = float(fidelity.hue_histogram_emd(fake_hue, other_hue).mean())
    if all("recovered" in own for own, _ in pairs):
        recovered = torch.from_numpy(np.concatenate([own["recovered"] for own, _ in pairs]))
        recorded = torch.from_numpy(np.concatenate([np.repeat(other["recorded"][None], len(own["recovered"]), 0)
                                                    for own, other in pairs]))
        errors = fidelity.attribute_differences(dict(zip(ATTRIBUTES, recovered.unbind(1))),
                                                dict(zip(ATTRIBUTES, recorded.unbind(1))))
        chance.update({f"{k}_error": float(v.mean()) for k, v in errors.items()})
    return chance


REFERENCES = {
    "test_images": "the distinct stimuli of the evaluated trials, each once (by image_id)",
    "class_images": "every distinct image of the evaluated classes in the corpus, each once (all splits: "
                    "training images included)",
}
IMAGE_PREPROCESSING = ("real and generated images at the model's image_size; a non-square stimulus is centre-cropped "
                       "to a square, then resized (bicubic), as the corpus stores it for training")


def _inception_protocol(eval_cfg: EvalConfig) -> str:
    if not eval_cfg.inception_metrics:
        return "none (eval.inception_metrics=false: no IS/FID/KID)"
    return "random (tests only)" if eval_cfg.random_inception else "FID Inception (TF 2015-12-05 weights)"


def _write_per_subject(path: Path, records: list[dict], eval_cfg: EvalConfig, n_way: int) -> None:
    """Per subject: trials, EEG accuracy, generated-image accuracy (the teacher's n-way top-k, as
    in metrics.json) and the mean of each per-image measure."""
    by_subject: dict[int, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["key"]):
        by_subject[record["subject"]].append(record)
    columns = ["eeg_top1", "eeg_top5", "hist_intersection", "hue_emd", "ssim", "pixel_correlation", "hue_error",
               "saturation_error", "brightness_error"]
    present = [c for c in columns if records and c in records[0]]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "trials", *present[:2], "generated_n_way_top_k", *present[2:]])
        for subject, rows in sorted(by_subject.items()):
            means = [float(np.mean([np.mean(r[c]) for r in rows])) for c in present]
            labels = torch.tensor([r["label"] for r in rows for _ in range(eval_cfg.images_per_trial)])
            logits = torch.from_numpy(np.concatenate([r["teacher_logits"] for r in rows]))
            generated = fidelity.n_way_topk_accuracy(logits, labels, n_way, eval_cfg.top_k, trials=10, seed=eval_cfg.seed)
            writer.writerow([subject, len(rows), *(f"{m:.4f}" for m in [*means[:2], generated, *means[2:]])])


def _write_grid(path: Path, grid: dict, class_names: list[str]) -> None:
    """Each row: the true image, then its generations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grid:
        return
    rows = sorted(grid)
    columns = 1 + len(grid[rows[0]][1])
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows) + 0.4), squeeze=False)
    for r, key in enumerate(rows):
        real, generated, label = grid[key]
        for c, image in enumerate([real, *generated]):
            axes[r, c].imshow(image, interpolation="nearest")  # small images: show pixels, not a blur
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(f"{class_names[label]}\ntrial {key}", fontsize=8)
    for c in range(columns):
        axes[0, c].set_title("true image" if c == 0 else f"generated {c}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
