"""The release a finished run exports: its stage weights under the names the pipeline loads, the
resolved config, ``corpus.json`` and a model card (:mod:`eeg2im_scale.models.pipeline` reads it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import Config, to_dict
from ..data.manifest import Manifest
from ..models.build import Geometry, encoder_inputs
from ..models.pipeline import WEIGHTS, model_card, shareable
from .stages import stage_weights


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


def export_release(cfg: Config, out: Path) -> Path:
    """Assemble ``out`` from the run's stage exports (EMA weights for the UNet)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_strip(load_file(str(stage_weights(cfg, "highlevel"))), "encoder."), str(tmp / WEIGHTS["highlevel"]))
    save_file(_strip(load_file(str(stage_weights(cfg, "lowlevel"))), "encoder."), str(tmp / WEIGHTS["lowlevel"]))
    save_file(_strip(load_file(str(stage_weights(cfg, "diffusion"))), "ema.unet."), str(tmp / WEIGHTS["unet"]))
    save_file(_strip(load_file(str(stage_weights(cfg, "teacher"))), "teacher."), str(tmp / WEIGHTS["teacher"]))
    manifest = Manifest.for_data(cfg.data)
    info = manifest.info
    mean, std = manifest.eeg_stats(cfg.data.split_by)
    corpus = {
        "channel_names": info["channel_names"], "sfreq": info["sfreq"], "time_points": info["time_points"],
        "class_names": manifest.class_names, "class_subset": manifest.class_subset,
        "attribute_names": manifest.attribute_names,
        "source": info.get("source"), "split_by": cfg.data.split_by,
        "eeg_window": list(cfg.data.eeg_window) if cfg.data.eeg_window else None,
        "bandpass": list(cfg.data.bandpass) if cfg.data.bandpass else None,
        "normalize": cfg.data.normalize, "eeg_mean": mean.tolist(), "eeg_std": std.tolist(),
        "image_size": cfg.data.image_size,
        "split_counts": {s: manifest.count(cfg.data.split_by, s) for s in ("train", "val", "test")},
        # what each EEG encoder saw: resampling, crop/pad, channel names and drops, scaling
        "encoder_input": encoder_inputs(cfg.model, Geometry(cfg.data, manifest.selected_info)),
    }
    (tmp / "corpus.json").write_text(json.dumps(corpus, indent=1))
    (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (tmp / "README.md").write_text(model_card(cfg, corpus))
    shareable(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
