"""A release as a diffusers pipeline: ``EEG2IMDiffusionPipeline.from_pretrained(DIR)``.

Components, each saved by diffusers' own ``save_pretrained`` into its folder beside
``model_index.json``:

* ``conditioner`` (:class:`EEGConditioner`): the two EEG encoders and the release's EEG
  preprocessing (window, band-pass, z-score statistics): a raw trial → the FiLM conditioning vector;
* ``unet`` (:class:`FiLMUNetModel`): the FiLM-conditioned diffusers UNet (EMA weights);
* ``scheduler``: the sampler the release was evaluated with (a diffusers scheduler; swap it as
  for any pipeline, ``pipe.scheduler = DPMSolverMultistepScheduler.from_config(...)``).

``pipe(eeg, num_inference_steps, guidance_scale, generator)`` returns images as diffusers
pipelines do, and with the same generator the same images as ``eeg2im generate`` (both run
:func:`sampling.sample_with`). ``eeg2im export-diffusers`` writes one from a release directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..config import config_from_dict
from ..data.preprocess import EEGPreprocess, bandpass_sos
from .autoencoder import from_unit_range
from .build import Geometry, build_highlevel, build_lowlevel, condition, condition_dim
from .film_unet import FiLMUNet
from .pipeline import EEG2IMPipeline
from .sampling import make_sampling_scheduler, sample_with


class EEGConditioner(ModelMixin, ConfigMixin):
    """Raw EEG trials [B, channels, time] (µV, as the corpus stores them) → conditioning [B, cond_dim]."""

    @register_to_config
    def __init__(self, model: dict, data: dict, corpus: dict):
        super().__init__()
        cfg = config_from_dict({"model": model, "data": data})
        geo = Geometry(cfg.data, corpus)
        self.highlevel = build_highlevel(cfg.model, geo)
        self.lowlevel = build_lowlevel(cfg.model, geo)[1]
        self.condition_on = cfg.model.diffusion.condition_on
        self.expected_shape = (len(corpus["channel_names"]), int(corpus["time_points"]))
        self.preprocess = EEGPreprocess(
            tuple(corpus["eeg_window"]) if corpus["eeg_window"] else None,
            np.asarray(corpus["eeg_mean"], np.float32) if corpus["normalize"] else None,
            np.asarray(corpus["eeg_std"], np.float32) if corpus["normalize"] else None,
            bandpass_sos(*corpus["bandpass"], corpus["sfreq"]) if corpus["bandpass"] else None)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # braindecode sizes its layers with a forward pass at construction: no meta-device (empty) init
        kwargs["low_cpu_mem_usage"] = False
        return super().from_pretrained(*args, **kwargs)

    def forward(self, eeg: torch.Tensor) -> torch.Tensor:
        if tuple(eeg.shape[1:]) != self.expected_shape:
            raise ValueError(f"EEG has shape {tuple(eeg.shape)}, this model expects [N, {self.expected_shape[0]}, "
                             f"{self.expected_shape[1]}] (trials, channels, time)")
        prepared = torch.stack([self.preprocess(trial.float().cpu()) for trial in eeg]).to(self.device)
        return condition(self.highlevel, self.lowlevel, prepared, self.condition_on)


class FiLMUNetModel(ModelMixin, ConfigMixin):
    """:class:`FiLMUNet` as a diffusers model (config + weights through ``save_pretrained``)."""

    @register_to_config
    def __init__(self, diffusion: dict, image_size: int, cond_dim: int, attention: str = "auto"):
        super().__init__()
        cfg = config_from_dict({"model": {"diffusion": diffusion}}).model.diffusion
        self.film = FiLMUNet(cfg, image_size, cond_dim, attention)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.film(noisy, timesteps, cond, drop_mask)


class EEG2IMDiffusionPipeline(DiffusionPipeline):
    """EEG → images. ``eeg``: one raw trial [channels, time] or trials [N, channels, time]."""

    model_cpu_offload_seq = "conditioner->unet"

    def __init__(self, conditioner: EEGConditioner, unet: FiLMUNetModel, scheduler):
        super().__init__()
        self.register_modules(conditioner=conditioner, unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As diffusers' own, without ``trust_remote_code`` for a folder whose loader file is the one
        :func:`export_diffusers` writes (it only imports this class); any other code still needs it."""
        loader = Path(pretrained_model_name_or_path) / f"{LOADER_FILE}.py"
        if loader.is_file() and loader.read_text() == LOADER_SOURCE:
            kwargs.setdefault("trust_remote_code", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @torch.no_grad()
    def __call__(self, eeg, num_images_per_trial: int = 1, num_inference_steps: int = 50,
                 guidance_scale: float = 3.0, generator: torch.Generator | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        trials = torch.as_tensor(np.asarray(eeg, np.float32))
        trials = trials[None] if trials.dim() == 2 else trials
        # each image's own copy of its trial through the encoders, as `eeg2im generate` batches them
        cond = self.conditioner(trials.repeat_interleave(num_images_per_trial, dim=0).to(self.device))
        images = sample_with(self.unet.film, cond, self.scheduler, num_inference_steps, guidance_scale,
                             self.unet.config.image_size, generator)
        pixels = from_unit_range(images).permute(0, 2, 3, 1).cpu().numpy()
        out = self.numpy_to_pil(pixels) if output_type == "pil" else pixels
        return ImagePipelineOutput(images=out) if return_dict else (out,)


HUB_TAGS = ["eeg", "eeg-to-image", "brain-computer-interface", "diffusion", "braindecode", "eeg2im_scale"]
TASK = "unconditional-image-generation"  # the Hub's pipeline tag nearest to EEG-conditioned generation
# model_index.json names the class as [module file, class]: diffusers then imports it from that file in the folder
LOADER_FILE = "pipeline"
LOADER_SOURCE = ('"""Lets `DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)` find the pipeline '
                 'class; it needs eeg2im_scale installed."""\nfrom eeg2im_scale.models.diffusers_pipeline import '
                 'EEG2IMDiffusionPipeline  # noqa: F401\n')


def release_metrics(model_dir: str | Path) -> dict | None:
    """The release's test metrics (``RUN_DIR/eval/metrics.json`` of a complete test evaluation, the
    one that also fills its model card); None when there is none."""
    path = Path(model_dir).parent / "eval" / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    protocol = metrics.get("protocol", {})
    return metrics if protocol.get("split") == "test" and not protocol.get("partial") else None


def hub_header(name: str, corpus: dict, metrics: dict | None) -> str:
    """The card's YAML header as the Hub reads it (``huggingface_hub.ModelCardData``): library,
    license, tags, dataset, and a ``model-index`` of the test metrics (scalar values only)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = str(corpus.get("source", "unknown"))
    results = [EvalResult(task_type=TASK, task_name="EEG-to-image generation", dataset_type=dataset,
                          dataset_name=dataset, dataset_split="test", metric_type=key,
                          metric_name=entry.get("name", key), metric_value=float(entry["value"]))
               for key, entry in (metrics or {}).get("metrics", {}).items()
               if isinstance(entry.get("value"), (int, float)) and np.isfinite(entry["value"])]
    data = ModelCardData(library_name="diffusers", license="mit", pipeline_tag=TASK, tags=HUB_TAGS,
                         datasets=[dataset], metrics=[r.metric_type for r in results] or None, model_name=name,
                         eval_results=results or None)
    return f"---\n{data.to_yaml()}\n---\n\n"


def export_diffusers(model_dir: str | Path, out: str | Path, sampler: str | None = None) -> Path:
    """Write the release ``model_dir`` as a diffusers pipeline folder ``out`` (which must not exist or
    be empty), with the release's model card under the Hub's YAML header (test metrics in its
    ``model-index``), so that ``huggingface_hub.upload_folder`` publishes it as is, and
    ``DiffusionPipeline.from_pretrained(out, trust_remote_code=True)`` loads it as any custom pipeline."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out")
    pipe = from_release(model_dir, sampler)
    pipe.save_pretrained(out)
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = [LOADER_FILE, type(pipe).__name__]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / f"{LOADER_FILE}.py").write_text(LOADER_SOURCE)
    card = (Path(model_dir) / "README.md").read_text()
    usage = ("\n## Load with diffusers\n```python\nfrom diffusers import DiffusionPipeline\n"
             "pipe = DiffusionPipeline.from_pretrained(\"<this folder>\", trust_remote_code=True)  # needs eeg2im_scale\n"
             "images = pipe(eeg_trial, num_images_per_trial=4, num_inference_steps=50, guidance_scale=3.0).images\n```\n")
    header = hub_header(f"eeg2im-{Path(model_dir).resolve().parent.name}", pipe.conditioner.config.corpus,
                        release_metrics(model_dir))
    (out / "README.md").write_text(header + card + usage)
    return out


def from_release(model_dir: str | Path, sampler: str | None = None) -> EEG2IMDiffusionPipeline:
    """The diffusers pipeline of an ``eeg2im_scale`` release directory (weights copied as loaded)."""
    release = EEG2IMPipeline(model_dir)
    cfg = release.cfg
    data = {key: value for key, value in asdict(cfg.data).items() if key in ("eeg_window", "image_size")}
    corpus = json.loads(json.dumps(release.corpus))  # plain JSON types for the component's config
    conditioner = EEGConditioner(model=json.loads(json.dumps(asdict(cfg.model))), data=data, corpus=corpus)
    conditioner.highlevel.load_state_dict(release.highlevel.state_dict())
    conditioner.lowlevel.load_state_dict(release.lowlevel.state_dict())
    unet = FiLMUNetModel(diffusion=json.loads(json.dumps(asdict(cfg.model.diffusion))),
                         image_size=int(corpus["image_size"]), cond_dim=condition_dim(cfg.model),
                         attention=cfg.model.attention)
    unet.film.load_state_dict(release.unet.state_dict())
    scheduler = make_sampling_scheduler(cfg.model.diffusion, sampler or cfg.model.diffusion.sampler)
    return EEG2IMDiffusionPipeline(conditioner.eval(), unet.eval(), scheduler)
