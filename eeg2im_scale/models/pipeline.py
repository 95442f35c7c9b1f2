"""The released model: a self-describing directory, and the EEG → image pipeline that loads it.

A release holds everything inference needs and nothing from the training run: safetensors
weights (EEG encoders, the EMA UNet, the fine-tuned teacher for evaluation), the resolved config,
``corpus.json`` (channel names, sampling rate, class names, normalisation statistics, EEG window
and band-pass) and a model card. It loads on a machine that never saw the training run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from ..config import Config, config_from_dict
from ..data.preprocess import EEGPreprocess, bandpass_sos
from .autoencoder import from_unit_range
from .build import Geometry, build_highlevel, build_lowlevel, build_unet, condition
from .sampling import sample
from .teacher import Teacher, image_encoder

WEIGHTS = {"highlevel": "highlevel.safetensors", "lowlevel": "lowlevel.safetensors", "unet": "unet.safetensors",
           "teacher": "teacher.safetensors"}


def shareable(directory: Path) -> None:
    """Give the release the modes any file written by this user gets (0644 and 0755 under the usual
    umask 022): safetensors writes its files 0600, and a release is meant to be copied and shared."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def model_card(cfg: Config, corpus: dict, metrics: dict | None = None) -> str:
    """The release's README: data, splits, models, and the evaluation once there is one."""
    model_cfg = cfg.model
    counts = corpus["split_counts"]
    teacher = image_encoder(model_cfg.teacher)
    encoders = {"multilevel": "the high-level and the low-level EEG encoder condition",
                "highlevel": "the high-level EEG encoder alone conditions",
                "lowlevel": "the low-level EEG encoder alone conditions"}[model_cfg.diffusion.condition_on]
    scaling = "z-scored with training statistics" if corpus["normalize"] else "not z-scored"
    protocol = {k: v for k, v in metrics["protocol"].items() if k != "eval_config"} if metrics else {}
    return "\n".join([
        "# EEG2IM model (eeg2im_scale)",
        "",
        f"EEG → image generation: a high-level (semantic) EEG encoder distilled from a `{model_cfg.teacher.arch}` teacher",
        f"and a low-level EEG encoder aligned with an image autoencoder; {encoders} a diffusion UNet through FiLM.",
        "",
        "## Data",
        f"- corpus: `{cfg.data.root}` (source: {corpus['source']}), {len(corpus['channel_names'])} channels × "
        f"{corpus['time_points']} samples at {corpus['sfreq']} Hz, {len(corpus['class_names'])} classes",
        f"- split scheme: `{corpus['split_by']}`; train/val/test trials: {counts['train']}/{counts['val']}/{counts['test']}",
        f"- EEG window: {corpus['eeg_window']}, band-pass: {corpus['bandpass']}, {scaling}",
        "",
        "## Models",
        f"- teacher: {teacher}, input {model_cfg.teacher.input_size} px",
        f"- high-level encoder: braindecode `{model_cfg.highlevel.backbone}`{_started_from(model_cfg.highlevel)}, "
        f"embedding {model_cfg.highlevel.embed_dim}",
        f"- low-level encoder: braindecode `{model_cfg.lowlevel.backbone}`{_started_from(model_cfg.lowlevel)}, "
        f"latent {model_cfg.lowlevel.latent_dim}",
        f"- FiLM UNet: channels {list(model_cfg.diffusion.block_channels)}, {model_cfg.diffusion.prediction_type} prediction, "
        f"image size {corpus['image_size']}; weights are the EMA (half-life {cfg.train.ema_halflife_kimg} kimg)",
        "",
        "## Metrics",
        *(_metric_table(metrics["metrics"]) + ["", "Protocol:", "```json\n" + json.dumps(protocol, indent=1) + "\n```"]
          if metrics else
          ["Not evaluated yet: `eeg2im evaluate --config ... --checkpoint <this directory>` fills this in."]),
        "",
        "## Use",
        "```",
        "eeg2im generate --model <this directory> --eeg TRIAL.npy --out OUT --num-images 4 --guidance 3",
        "```",
        f"TRIAL.npy holds one raw trial [{len(corpus['channel_names'])}, {corpus['time_points']}] (channels × time, "
        "as stored in the corpus, not z-scored) or several [N, channels, time]; `eeg2im export-trial` writes one "
        "from a corpus.",
        "",
    ])


def _started_from(encoder_cfg) -> str:
    weights = encoder_cfg.backbone_weights
    return f" fine-tuned from pretrained weights `{weights}`" if weights else " (trained from random initialisation)"


def _metric_table(entries: dict) -> list[str]:
    """metrics.json's entries as Markdown rows: name, value, chance level, which way is better, definition."""
    def shown(value) -> str:
        if isinstance(value, dict):
            return f"{value['mean']:.4g} ± {value['std']:.2g}"
        return "—" if value is None else f"{value:.4g}"

    rows = ["| metric | value | chance | better | definition |", "|---|---|---|---|---|"]
    for key, entry in entries.items():
        chance = shown(entry.get("chance")) if entry.get("chance") is not None else entry.get("chance_rule", "—")
        rows.append(f"| {entry.get('name', key)} (`{key}`) | {shown(entry['value'])} | {chance} | "
                    f"{entry.get('better', '')} | {entry.get('definition', '')} |")
    return rows


EXPORT_HINT = "`eeg2im export-trial --root CORPUS --key KEY --out DIR` writes one from a corpus"


def read_corpus_info(model_dir: str | Path) -> dict:
    """A release's ``corpus.json`` (what its input must look like), without loading any model."""
    path = Path(model_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not an eeg2im model directory: missing corpus.json")
    return json.loads(path.read_text())


def load_trials(path: str | Path, channels: int, time_points: int) -> np.ndarray:
    """Trials [N, channels, time] float32 from a .npy ([channels, time] or [N, channels, time]) or a
    .npz with key ``eeg``, checked (file type, shape, dtype, finiteness) before any model is loaded;
    a problem is one ``ValueError`` line naming the file and the fix."""
    path = Path(path)
    expected = f"[{channels}, {time_points}] (channels x time) or [N, {channels}, {time_points}]"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {EXPORT_HINT}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"PK":
        with np.load(path, allow_pickle=False) as npz:
            if "eeg" not in npz.files:
                raise ValueError(f"{path}: a .npz needs the key 'eeg' holding {expected}; it holds {npz.files}")
            trials = _numeric(path, lambda: npz["eeg"])
    elif magic == b"\x93NUMPY":
        trials = _numeric(path, lambda: np.load(path, allow_pickle=False))
    else:
        raise ValueError(f"{path}: not a NumPy .npy/.npz file ({'empty' if not magic else f'starts with {magic!r}'});"
                         f" save the trial with numpy.save, or {EXPORT_HINT}")
    if trials.ndim == 2:
        trials = trials[None]
    if trials.ndim != 3 or trials.shape[1:] != (channels, time_points) or not len(trials):
        raise ValueError(f"{path}: shape {trials.shape}, this model expects {expected}; {EXPORT_HINT}")
    if trials.dtype.kind not in "fiu":
        raise ValueError(f"{path}: dtype {trials.dtype}, expected real numbers (raw µV as stored in the corpus)")
    bad = np.argwhere(~np.isfinite(trials))
    if len(bad):
        t, c, x = (int(i) for i in bad[0])
        raise ValueError(f"{path}: {len(bad)} NaN/Inf values, first in trial {t} at (channel, time) = ({c}, {x}); "
                         f"replace or drop those samples (e.g. interpolate the channel) before generating")
    return trials.astype(np.float32, copy=False)


def _numeric(path: Path, read) -> np.ndarray:
    try:
        return read()
    except ValueError as exc:  # numpy refuses pickled object arrays; say so without suggesting to unpickle
        if "pickle" in str(exc):
            raise ValueError(f"{path}: holds pickled Python objects, not a numeric array; save a float array "
                             f"[channels, time] with numpy.save") from None
        raise ValueError(f"{path}: not a readable array ({exc})") from None
    except EOFError:
        raise ValueError(f"{path}: truncated .npy/.npz file") from None


class EEG2IMPipeline:
    """Loads a release directory; ``generate`` turns one raw EEG trial into images."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        self.dir = Path(model_dir)
        missing = [name for name in [*WEIGHTS.values(), "corpus.json", "config.yaml"] if not (self.dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.dir} is not an eeg2im model directory: missing {', '.join(missing)}")
        self.cfg: Config = config_from_dict(yaml.safe_load((self.dir / "config.yaml").read_text()))
        self.corpus = json.loads((self.dir / "corpus.json").read_text())
        self.device = torch.device(device)
        geo = Geometry(self.cfg.data, self.corpus)
        self.highlevel = self._load(build_highlevel(self.cfg.model, geo), "highlevel")
        self.lowlevel = self._load(build_lowlevel(self.cfg.model, geo)[1], "lowlevel")
        self.unet = self._load(build_unet(self.cfg.model, geo), "unet")
        self.teacher = self._load(Teacher(self.cfg.model.teacher, geo.num_classes), "teacher")
        c = self.corpus
        self.preprocess = EEGPreprocess(
            tuple(c["eeg_window"]) if c["eeg_window"] else None,
            np.asarray(c["eeg_mean"], np.float32) if c["normalize"] else None,
            np.asarray(c["eeg_std"], np.float32) if c["normalize"] else None,
            bandpass_sos(*c["bandpass"], c["sfreq"]) if c["bandpass"] else None)

    def _load(self, module: torch.nn.Module, name: str) -> torch.nn.Module:
        module.load_state_dict(load_file(str(self.dir / WEIGHTS[name])), strict=True)
        return module.to(self.device).eval().requires_grad_(False)

    def condition(self, eeg: torch.Tensor) -> torch.Tensor:
        return condition(self.highlevel, self.lowlevel, eeg, self.cfg.model.diffusion.condition_on)

    @torch.no_grad()
    def generate(self, eeg: np.ndarray, num_images: int = 4, guidance_scale: float | None = None,
                 steps: int | None = None, sampler: str | None = None, seed: int = 0) -> np.ndarray:
        """Raw EEG trial [channels, time] (as stored in the corpus) → uint8 images [N, H, W, 3]."""
        expected = (len(self.corpus["channel_names"]), int(self.corpus["time_points"]))
        if eeg.shape != expected:
            raise ValueError(f"EEG trial has shape {eeg.shape}, this model expects {expected} (channels, time)")
        x = self.preprocess(torch.as_tensor(np.asarray(eeg, np.float32))).to(self.device)
        cond = self.condition(x[None].expand(num_images, -1, -1))
        diffusion_cfg = self.cfg.model.diffusion
        generator = torch.Generator(self.device).manual_seed(seed)
        images = sample(self.unet, cond, sampler or diffusion_cfg.sampler, steps or diffusion_cfg.sample_steps,
                        diffusion_cfg.guidance_scale if guidance_scale is None else guidance_scale,
                        self.corpus["image_size"], generator)
        return from_unit_range(images).permute(0, 2, 3, 1).cpu().numpy()

