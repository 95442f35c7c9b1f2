"""The four EEG2IM training stages as modules DeepSpeed can own.

Each stage's trainable module computes its own loss in ``forward(batch) -> (loss, terms)``, so
the loop stays generic. Frozen networks from earlier stages (the teacher for KD, the encoders
that condition the UNet) are held *outside* the module: DeepSpeed neither partitions, casts nor
checkpoints them, and a stage's export holds only what that stage trained.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import (STAGES, Config, DataConfig, DiffusionConfig, HighLevelConfig, LowLevelConfig,
                      TrainConfig)
from ..data.manifest import Manifest
from ..models.autoencoder import ImageAutoencoder, to_unit_range
from ..models.eeg_encoders import HighLevelEncoder, LowLevelEncoder
from ..models.film_unet import FiLMUNet
from ..models.finetune import merge_lora
from ..models.losses import diffusion_loss, highlevel_loss, lowlevel_loss
from ..models.sampling import make_train_scheduler, noised_input_and_target
from ..models.build import (Geometry, build_highlevel, build_lowlevel, build_teacher_model, build_unet, condition,
                            frozen, load_prefixed)
from ..models.teacher import Teacher, flip_and_shift
from .checkpoint import Stateful
from .ema import EMA, ema_beta

log = logging.getLogger(__name__)

DEPENDENCIES = {"teacher": (), "lowlevel": (), "highlevel": ("teacher",), "diffusion": ("lowlevel", "highlevel")}


def stage_dir(cfg: Config, name: str) -> Path:
    return Path(cfg.run_dir) / "stages" / name


def stage_weights(cfg: Config, name: str) -> Path:
    return stage_dir(cfg, name) / "final.safetensors"


def missing_dependencies(cfg: Config, stages: list[str]) -> list[str]:
    """Earlier stages that ``stages`` need, that are neither planned in this run nor on disk."""
    planned = set(stages)
    needed = {dep for s in stages for dep in DEPENDENCIES[s]}
    return [d for d in STAGES if d in needed and d not in planned and not stage_weights(cfg, d).is_file()]


def _images(batch: dict, dtype: torch.dtype) -> torch.Tensor:
    """The loader's uint8 images as [-1, 1] floats in the module's dtype."""
    return to_unit_range(batch["image"]).to(dtype)


# ---- trainable stage modules ------------------------------------------------------------------


class StageModule(nn.Module):
    """Base of the trainable modules: ``dtype`` is the engine's compute dtype, given rather than
    read off the parameters (under ZeRO-3 those are partitioned placeholders)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def frozen_forward(self, batch: dict) -> None:
        """Run only the frozen networks ``forward`` uses (FLOP accounting: they get no backward)."""


class ShuffledLabels:
    """``train.shuffle_labels``, the shuffled-label control: every training image's label replaced
    by another training image's under a seeded permutation (``Manifest.shuffled_image_labels``),
    for the teacher and the EEG encoder alike, so distillation cannot bring the true labels back.
    Images outside the training split keep their labels: validation measures the true ones."""

    def __init__(self, data_cfg: DataConfig, seed: int):
        self.by_image = Manifest.for_data(data_cfg).shuffled_image_labels(data_cfg.split_by, seed)

    def __call__(self, batch: dict) -> torch.Tensor:
        true = batch["label"]
        return torch.tensor([self.by_image.get(image, label) for image, label in zip(batch["image_id"], true.tolist())],
                            device=true.device)


def _training_labels(batch: dict, shuffled: ShuffledLabels | None) -> torch.Tensor:
    return batch["label"] if shuffled is None else shuffled(batch)


class TeacherModule(StageModule):
    """Fine-tunes ResNet50 on the training images so its logits cover the dataset's classes."""

    def __init__(self, teacher: nn.Module, flips: str | None, dtype: torch.dtype,
                 shuffled: ShuffledLabels | None = None):
        super().__init__(dtype)
        self.teacher, self.flips, self.shuffled = teacher, flips, shuffled  # flips None: no augmentation

    def forward(self, batch: dict):
        images = _images(batch, self.dtype)
        if self.flips is not None and self.training:
            images = flip_and_shift(images, self.flips)
        logits, _ = self.teacher(images)
        labels = _training_labels(batch, self.shuffled)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return loss, {"ce": loss.detach(), "accuracy": accuracy}


class LowLevelModule(StageModule):
    """Image autoencoder and low-level EEG encoder, trained jointly."""

    def __init__(self, autoencoder: ImageAutoencoder, encoder: LowLevelEncoder, low_cfg: LowLevelConfig,
                 dtype: torch.dtype):
        super().__init__(dtype)
        self.autoencoder, self.encoder, self.low_cfg = autoencoder, encoder, low_cfg
        # training-only heads: the release keeps the encoder alone
        dim = low_cfg.latent_dim
        self.layout_head = (nn.Linear(dim, 3 * low_cfg.colour_layout_size ** 2)
                            if low_cfg.colour_layout_weight else None)
        self.colour_head = (nn.Linear(dim, low_cfg.colour_distribution_bins)
                            if low_cfg.colour_distribution_weight else None)

    def forward(self, batch: dict):
        images = _images(batch, self.dtype)
        recon, image_latent = self.autoencoder(images)
        eeg_latent = self.encoder(batch["eeg"])
        layout = self.layout_head(eeg_latent).float() if self.layout_head is not None else None
        colour = self.colour_head(eeg_latent).float() if self.colour_head is not None else None
        return lowlevel_loss(recon.float(), images.float(), eeg_latent.float(), image_latent.float(), self.low_cfg,
                             layout, colour)


class HighLevelModule(StageModule):
    """EEG semantic encoder distilled from the (frozen) fine-tuned teacher."""

    def __init__(self, encoder: HighLevelEncoder, teacher: nn.Module, high_cfg: HighLevelConfig, dtype: torch.dtype,
                 shuffled: ShuffledLabels | None = None):
        super().__init__(dtype)
        self.encoder, self.high_cfg, self.shuffled = encoder, high_cfg, shuffled
        self._teacher = [teacher]  # a list keeps it out of the module tree (not trained, cast or saved)

    def frozen_forward(self, batch: dict):
        with torch.no_grad():
            return self._teacher[0](to_unit_range(batch["image"]))

    def forward(self, batch: dict):
        outputs = {k: v.float() for k, v in self.encoder(batch["eeg"]).items()}
        teacher_logits, teacher_features = self.frozen_forward(batch)
        labels = _training_labels(batch, self.shuffled)
        loss, terms = highlevel_loss(outputs, labels, teacher_logits.float(), teacher_features.float(), self.high_cfg)
        terms["accuracy"] = (outputs["logits"].argmax(1) == labels).float().mean()
        return loss, terms


class DiffusionModule(StageModule):
    """DDPM training of the FiLM UNet on the frozen encoders' conditioning vector."""

    def __init__(self, unet: FiLMUNet, high: HighLevelEncoder, low: LowLevelEncoder, diffusion_cfg: DiffusionConfig,
                 dtype: torch.dtype, compile_backend: str | None = None):
        super().__init__(dtype)
        if compile_backend:
            unet.compile(backend=compile_backend)  # in place: state-dict keys stay the eager UNet's
        self.unet = unet
        self._encoders = [high, low]
        self.condition_on = diffusion_cfg.condition_on
        self.scheduler = make_train_scheduler(diffusion_cfg)

    def frozen_forward(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            return condition(*self._encoders, batch["eeg"], self.condition_on).to(self.dtype)

    def forward(self, batch: dict):
        clean = to_unit_range(batch["image"])  # float32: the noise schedule must not run in bf16/fp16
        cond = self.frozen_forward(batch)
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(clean),), device=clean.device)
        noisy, target = noised_input_and_target(self.scheduler, clean, noise, timesteps)
        drop = self.unet.random_drop_mask(len(clean), clean.device)
        prediction = self.unet(noisy.to(self.dtype), timesteps, cond, drop)
        loss = diffusion_loss(prediction.float(), target)
        return loss, {"mse": loss.detach()}


# ---- the stage objects the loop drives ----------------------------------------------------------


class Stage:
    """A trainable module plus the hooks the loop calls around DeepSpeed."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module, self.engine = name, module, None

    def attach(self, engine) -> None:
        self.engine = engine

    def after_step(self, images_per_step: int) -> None:
        """Called after every optimizer step."""

    def stateful(self) -> dict[str, Stateful]:
        """State beside the engine's that a checkpoint must carry, identical on every rank."""
        return {}

    def export_tensors(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state


class EncoderStage(Stage):
    """A stage that trains an EEG encoder (``module.encoder``): under ``finetune: lora`` its export
    has the adapters merged into the backbone, the plain architecture every later build loads."""

    def __init__(self, name: str, module: nn.Module, encoder_cfg: HighLevelConfig | LowLevelConfig):
        super().__init__(name, module)
        self.encoder_cfg = encoder_cfg

    def export_tensors(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return merge_lora(state, self.encoder_cfg.lora) if self.encoder_cfg.finetune == "lora" else state


class DiffusionStage(Stage):
    """Adds an EMA of the UNet (half-life in kimg); the export carries it as ``ema.unet.*``."""

    def __init__(self, module: DiffusionModule, halflife_kimg: float, zero_stage: int):
        super().__init__("diffusion", module)
        self.halflife_kimg, self.zero3 = halflife_kimg, zero_stage == 3
        self.ema: EMA | None = None

    def attach(self, engine) -> None:
        super().attach(engine)
        self.ema = EMA(engine.module.unet, zero3=self.zero3)

    def after_step(self, images_per_step: int) -> None:
        self.ema.update(self.engine.module.unet, ema_beta(images_per_step, self.halflife_kimg))

    def stateful(self) -> dict[str, Stateful]:
        return {"ema": self.ema}

    def export_tensors(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**state, **{f"ema.unet.{k}": v for k, v in self.ema.state_dict().items()}}


def unet_compile_backend(cfg: TrainConfig, device: torch.device) -> str | None:
    """The ``torch.compile`` backend for the diffusion UNet, or None to run it eagerly. ``auto``
    compiles on CUDA with ZeRO <= 2, where it was measured faster (benchmarks/results/
    gpu_diffusion.json); ZeRO-3 gathers parameters in module hooks that break the graph, and on a
    CPU compiling takes longer than a short run gains."""
    wanted = (device.type == "cuda" and cfg.zero_stage <= 2) if cfg.compile == "auto" else cfg.compile
    return cfg.compile_backend if wanted else None


def build_stage(name: str, cfg: Config, device: torch.device, dtype: torch.dtype = torch.float32) -> Stage:
    """The stage ``name`` with its frozen dependencies loaded from earlier stages' exports."""
    geo = Geometry(cfg.data, Manifest.for_data(cfg.data).selected_info)
    missing = missing_dependencies(cfg, [name])
    if missing:
        raise FileNotFoundError(f"stage {name} needs {', '.join(str(stage_weights(cfg, m)) for m in missing)}; "
                                f"train those stages first (train.stage={missing[0]} or train.stage=all)")
    shuffled = ShuffledLabels(cfg.data, cfg.train.seed) if cfg.train.shuffle_labels else None
    if name == "teacher":
        augment = cfg.model.teacher.flips if cfg.model.teacher.augment else None
        return Stage(name, TeacherModule(build_teacher_model(cfg.model, geo), augment, dtype, shuffled))
    if name == "lowlevel":
        return EncoderStage(name, LowLevelModule(*build_lowlevel(cfg.model, geo, pretrained=True), cfg.model.lowlevel,
                                                 dtype), cfg.model.lowlevel)
    if name == "highlevel":
        # the fine-tuned export replaces any ImageNet weights, so none are looked up here
        teacher = load_prefixed(Teacher(cfg.model.teacher, geo.num_classes), stage_weights(cfg, "teacher"), "teacher")
        encoder = build_highlevel(cfg.model, geo, pretrained=True)
        return EncoderStage(name, HighLevelModule(encoder, frozen(teacher, device), cfg.model.highlevel, dtype, shuffled),
                            cfg.model.highlevel)
    if name == "diffusion":
        high = load_prefixed(build_highlevel(cfg.model, geo), stage_weights(cfg, "highlevel"), "encoder")
        low = load_prefixed(build_lowlevel(cfg.model, geo)[1], stage_weights(cfg, "lowlevel"), "encoder")
        backend = unet_compile_backend(cfg.train, device)
        log.info("diffusion UNet: %s", f"torch.compile(backend={backend!r})" if backend else "eager (not compiled)")
        module = DiffusionModule(build_unet(cfg.model, geo), frozen(high, device), frozen(low, device),
                                 cfg.model.diffusion, dtype, backend)
        return DiffusionStage(module, cfg.train.ema_halflife_kimg, cfg.train.zero_stage)
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
