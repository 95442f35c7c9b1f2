"""One typed configuration for every entry point.

Dataclasses are the schema; YAML files in ``configs/`` fill them and ``key.sub=value`` overrides
from the command line patch them. Every mistake (unknown key, wrong type, bad choice) is a
:class:`ConfigError` that names the dotted key and lists what would have been valid, so a typo
fails before any work starts instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml



# ``data.split_by``: the scheme grammar (data/splits.py assigns the splits themselves)
SPLITS = ("train", "val", "test")
SCHEMES = ("image", "subject", "block", "release")  # stored as manifest columns split_<scheme>
SCHEME_FORMS = ("image | subject | block | release | loso:<subject> | heldout:<class>,<class>,... | "
                "intra:<subject>:<scheme> | inter:<subject>:<scheme>")


@dataclass(frozen=True)
class Scheme:
    """A parsed ``data.split_by``: a stored scheme (``column`` set) or a protocol scheme."""

    kind: str
    subject: int | None = None  # loso, intra, inter
    classes: tuple[str, ...] = ()  # heldout
    base: str | None = None  # intra, inter: the stored scheme whose splits they restrict

    @property
    def column(self) -> str | None:
        return f"split_{self.kind}" if self.kind in SCHEMES else None


def parse_scheme(text: str) -> Scheme:
    """``data.split_by`` as a :class:`Scheme`; ValueError naming the valid forms otherwise."""
    kind, sep, argument = text.partition(":")
    if not sep and kind in SCHEMES:
        return Scheme(kind)
    if kind == "loso" and argument.strip().lstrip("-").isdigit():
        return Scheme(kind, subject=int(argument))
    classes = tuple(c for c in argument.split(",") if c)
    if kind == "heldout" and classes and len(set(classes)) == len(classes):
        return Scheme(kind, classes=classes)
    subject, _, base = argument.partition(":")
    if kind in ("intra", "inter") and subject.strip().lstrip("-").isdigit() and base in SCHEMES:
        return Scheme(kind, subject=int(subject), base=base)
    raise ValueError(f"split scheme {text!r} is not one of: {SCHEME_FORMS} (distinct class names; <scheme> one of "
                     f"{', '.join(SCHEMES)})")


# Choice lists, written once: the config checks values against them, the code that branches on them
# takes their tuples (typing.get_args)
Sampler = Literal["ddim", "dpm", "ddpm"]  # DDIM (eta 0), DPM-Solver++ (2nd order), DDPM ancestral
TeacherFlips = Literal["horizontal", "both", "none"]
AttentionBackend = Literal["auto", "xformers", "sdpa"]
StageName = Literal["teacher", "lowlevel", "highlevel", "diffusion"]
STAGES: tuple[str, ...] = typing.get_args(StageName)  # in training order


class ConfigError(ValueError):
    """A configuration mistake, reported with the dotted key that caused it."""


def _at_least_one(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


@dataclass
class SynthConfig:
    """The synthetic EEG/image corpus with recorded ground truth (see docs in ``configs/``)."""

    num_samples: int = 2000
    num_classes: int = 10
    num_subjects: int = 4
    sessions_per_subject: int = 4
    samples_per_shard: int = 250
    image_size: int = 64
    image_format: Literal["png", "jpg"] = "png"
    channels: int = 128
    time_points: int = 440
    sfreq: float = 1000.0
    class_snr: float = 1.0
    attribute_snr: float = 1.0
    subject_variability: float = 1.0
    drift: float = 0.5
    line_freq: float = 50.0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    workers: int = 1

    def check(self) -> None:
        for name in ("num_samples", "num_classes", "num_subjects", "samples_per_shard", "image_size", "channels",
                     "time_points", "sessions_per_subject", "workers"):
            _at_least_one(f"synth.{name}", getattr(self, name))
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ConfigError(f"synth.split_fractions must be three non-negative numbers summing to 1, "
                              f"got {list(self.split_fractions)}")
        if self.channels > 128:
            raise ConfigError(f"synth.channels is at most 128 (the montage has 128 electrodes), got {self.channels}")
        if self.sfreq <= 2 * self.line_freq:
            raise ConfigError(f"synth.sfreq ({self.sfreq}) must exceed twice synth.line_freq ({self.line_freq})")


@dataclass
class DataConfig:
    """How shards are streamed to a training or evaluation loop."""

    root: str = "runs/data/synthetic_tiny"
    split_by: str = "image"  # image | subject | block | release | loso:<subject> | heldout:<class>,... (data/splits.py)
    classes: list[str] | None = None  # a class subset by manifest class_name, relabelled 0..k-1 in this order
    batch_size: int = 32
    num_workers: int = 0
    shuffle_buffer: int = 1000
    samples_per_epoch: int = 0
    eeg_window: tuple[int, int] | None = None
    bandpass: tuple[float, float] | None = None
    normalize: bool = True
    image_size: int = 64
    on_error: Literal["raise", "skip"] = "raise"
    synthesize: bool = True
    seed: int = 0
    # a corpus at a URL (data/remote.py): local shard cache (null: stream every epoch), its bound, and how
    # often a dropped connection is retried before the shard counts as bad (data.on_error)
    cache_dir: str | None = None
    cache_max_gb: float = 50.0
    retries: int = 3

    def check(self) -> None:
        if not self.root.strip():
            raise ConfigError("data.root is empty: set it to a corpus directory (manifest.parquet + shards/); create one "
                              "with `eeg2im synth --out DIR` or `eeg2im convert ... --out DIR`, or name a new directory "
                              "and keep data.synthesize: true")
        for name in ("batch_size", "image_size", "shuffle_buffer"):
            _at_least_one(f"data.{name}", getattr(self, name))
        if self.num_workers < 0 or self.samples_per_epoch < 0 or self.retries < 0:
            raise ConfigError("data.num_workers, data.samples_per_epoch and data.retries must be >= 0")
        if not self.cache_max_gb > 0:
            raise ConfigError(f"data.cache_max_gb must be > 0, got {self.cache_max_gb}")
        if self.eeg_window is not None and not 0 <= self.eeg_window[0] < self.eeg_window[1]:
            raise ConfigError(f"data.eeg_window must be [start, stop) with 0 <= start < stop, got {list(self.eeg_window)}")
        try:
            parse_scheme(self.split_by)
        except ValueError as exc:
            raise ConfigError(f"data.split_by: {exc}") from None
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ConfigError(f"data.classes must list at least two distinct class names, got {self.classes}")
        if self.bandpass is not None and not 0 <= self.bandpass[0] < self.bandpass[1]:
            raise ConfigError(f"data.bandpass must be [low, high] Hz with 0 <= low < high, got {list(self.bandpass)}")


@dataclass
class TeacherConfig:
    """The image teacher (ResNet50 in the paper) whose logits and pooled features are distilled into the EEG."""

    # any torchvision classifier, or open_clip:<model> (OpenCLIP's image tower; models/teacher.py); the paper's is
    # ResNet50, resnet18 fits CPUs
    arch: str = "resnet50"
    pretrained: bool = False  # pretrained weights: from `weights` or the torch hub cache, never downloaded
    weights: str | None = None  # a torchvision state dict of `arch` (.pth/.safetensors), or an OpenCLIP checkpoint
    freeze_trunk: bool = False  # train the head only: the features stay the pretrained network's (as CLIP retrieval)
    input_size: int = 224  # images are resized to this before the teacher
    augment: bool = True  # random flips and shifts while fine-tuning (it memorises a few hundred images otherwise)
    # which flips: a photo keeps its label under a horizontal flip only; both suits shapes that survive a vertical one
    flips: TeacherFlips = "horizontal"


@dataclass
class LoRAConfig:
    """PEFT LoRA adapters on an encoder backbone (``finetune: lora``; models/finetune.py)."""

    r: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0
    # module names (peft matches by suffix); null: every nn.Linear of the backbone but its output layer's
    target_modules: list[str] | None = None

    def check(self, key: str) -> None:
        """Checked whatever ``finetune`` says, so a typo is caught before the run that would use it."""
        _at_least_one(f"{key}.r", self.r)
        if not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.alpha must be > 0 and {key}.dropout in [0, 1), got {self.alpha}, {self.dropout}")
        if self.target_modules is not None and (not self.target_modules or not all(self.target_modules)):
            raise ConfigError(f"{key}.target_modules must name modules (or be null for every linear layer the "
                              f"backbone calls), got {self.target_modules}")


@dataclass
class HighLevelConfig:
    """High-level (semantic) EEG encoder: braindecode backbone -> embedding -> class head."""

    backbone: str = "ShallowFBCSPNet"  # any braindecode model class (models/eeg_encoders.py)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to its constructor
    backbone_weights: str | None = None  # a save_pretrained directory or a Hugging Face id in the local cache
    # corpus channel -> the name a foundation model knows it by (null: drop it), or "nearest:<MNE montage>"
    # (models/foundation.py); rate, length and unit are adapted from the model's input spec
    backbone_channel_map: dict[str, Any] | str | None = None
    finetune: Literal["full", "frozen", "lora"] = "full"  # frozen: only the backbone's output layer and heads train
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    embed_dim: int = 256
    ce_weight: float = 1.0  # cross-entropy with the true label
    kd_weight: float = 1.0  # response-based KD: KL(teacher || student) on temperature-softened logits
    kd_temperature: float = 4.0
    feature_kd_weight: float = 1.0  # feature-based KD: projected embedding vs teacher's pooled 2048-d feature
    feature_kd_loss: Literal["mse", "cosine"] = "mse"


@dataclass
class LowLevelConfig:
    """Image autoencoder + low-level EEG encoder aligned with its latent, trained jointly."""

    backbone: str = "ShallowFBCSPNet"  # any braindecode model class (models/eeg_encoders.py)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to its constructor
    backbone_weights: str | None = None  # a save_pretrained directory or a Hugging Face id in the local cache
    # corpus channel -> the name a foundation model knows it by (null: drop it), or "nearest:<MNE montage>"
    # (models/foundation.py); rate, length and unit are adapted from the model's input spec
    backbone_channel_map: dict[str, Any] | str | None = None
    finetune: Literal["full", "frozen", "lora"] = "full"  # frozen: only the backbone's output layer and heads train
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    latent_dim: int = 128
    ae_channels: tuple[int, ...] = (32, 64, 128)
    recon_weight: float = 1.0
    align_weight: float = 1.0
    align_loss: Literal["mse", "cosine"] = "mse"
    contrastive_weight: float = 0.0  # optional InfoNCE between EEG and image latents
    contrastive_temperature: float = 0.1
    colour_layout_weight: float = 0.0  # EEG latent -> (linear) mean colour of each cell of a grid over the image
    colour_layout_size: int = 4  # that grid's side
    colour_distribution_weight: float = 0.0  # EEG latent -> (linear) the image's saturation-weighted hue histogram (KL)
    colour_distribution_bins: int = 12


@dataclass
class DiffusionConfig:
    """FiLM-conditioned diffusers UNet trained with DDPM, sampled with DDIM or DPM-Solver."""

    block_channels: tuple[int, ...] = (64, 128, 128)
    attention_levels: tuple[bool, ...] = (False, True, True)  # self-attention in the down/up blocks at each level
    layers_per_block: int = 2
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    # what the UNet predicts: the noise, the velocity, or the clean image ("sample": smooth images early in
    # training, so a CPU-minutes run already shows shapes and colours; epsilon/v for full-scale runs)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    # which EEG features condition the UNet: both (the paper's multi-level design) or one alone (ablation)
    condition_on: Literal["multilevel", "highlevel", "lowlevel"] = "multilevel"
    cond_dropout: float = 0.1  # probability of the null condition in training (classifier-free guidance)
    sampler: Sampler = "ddim"
    sample_steps: int = 50
    guidance_scale: float = 3.0
    # what sampling does to each step's predicted clean image x0 (pixel space, where guidance overshoots):
    # none, clip to [-1, 1], or dynamic thresholding (Imagen): clip to the x0_dynamic_ratio quantile of |x0|,
    # at least 1 and at most x0_dynamic_max, then rescale into [-1, 1]
    x0_clip: Literal["none", "clip", "dynamic"] = "clip"
    x0_dynamic_ratio: float = 0.995
    x0_dynamic_max: float = 1.5

    def check(self) -> None:
        if len(self.attention_levels) != len(self.block_channels):
            raise ConfigError(f"model.diffusion.attention_levels needs one entry per block_channels level "
                              f"({len(self.block_channels)}), got {len(self.attention_levels)}")
        if not 0 < self.x0_dynamic_ratio < 1 or not self.x0_dynamic_max >= 1:
            raise ConfigError(f"model.diffusion.x0_dynamic_ratio must be in (0, 1) and x0_dynamic_max >= 1, got "
                              f"{self.x0_dynamic_ratio}, {self.x0_dynamic_max}")
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"model.diffusion.cond_dropout must be in [0, 1), got {self.cond_dropout}")


@dataclass
class ModelConfig:
    attention: AttentionBackend = "auto"  # auto: PyTorch SDPA, the faster one measured (docs/performance.md)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    highlevel: HighLevelConfig = field(default_factory=HighLevelConfig)
    lowlevel: LowLevelConfig = field(default_factory=LowLevelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)



@dataclass
class StageConfig:
    """Optimisation of one training stage."""

    steps: int = 100  # optimizer steps
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0




@dataclass
class TrainConfig:
    """DeepSpeed training of every stage; each stage consumes the previous stages' exports."""

    stage: Literal[StageName, "all"] = "all"
    teacher: StageConfig = field(default_factory=lambda: StageConfig(steps=100, lr=1e-3))
    lowlevel: StageConfig = field(default_factory=lambda: StageConfig(steps=150, lr=1e-3))
    highlevel: StageConfig = field(default_factory=lambda: StageConfig(steps=150, lr=1e-3))
    diffusion: StageConfig = field(default_factory=lambda: StageConfig(steps=300, lr=2e-4))
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 needs a GPU; bf16 works on CPU too
    compile: bool | Literal["auto"] = "auto"  # torch.compile the diffusion UNet; auto: on CUDA with ZeRO <= 2
    compile_backend: str = "inductor"  # torch.compile backend; aot_eager traces without code generation (debugging)
    grad_accum: int = 1
    grad_clip: float = 1.0
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warm-up
    deepspeed_config: str | None = None  # JSON merged over the generated DeepSpeed config
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2
    log_every: int = 10
    ema_halflife_kimg: float = 0.5  # EMA of the diffusion UNet: half-life in thousands of images
    halt_after: int = 0  # stop with a checkpoint after this many steps in this invocation (0: run to the end);
    # for chunked jobs under a scheduler's time limit: relaunch with --resume
    collective_timeout_s: int = 600  # a dead rank makes the others fail after this, never hang
    shuffle_labels: bool = False  # control only: training images' labels permuted (seeded by seed), teacher included
    seed: int = 0

    def stage_config(self, name: str) -> StageConfig:
        return getattr(self, name)

    def check(self) -> None:
        for name in ("grad_accum", "checkpoint_every", "keep_checkpoints", "log_every", "collective_timeout_s"):
            _at_least_one(f"train.{name}", getattr(self, name))
        for name in STAGES:
            _at_least_one(f"train.{name}.steps", self.stage_config(name).steps)
        if self.halt_after < 0 or any(self.stage_config(name).warmup_steps < 0 for name in STAGES):
            raise ConfigError("train.halt_after and train.<stage>.warmup_steps must be >= 0 (0: off)")
        for name in STAGES:
            if not self.stage_config(name).lr > 0:
                raise ConfigError(f"train.{name}.lr must be > 0, got {self.stage_config(name).lr}")


ReconstructionMetric = Literal["pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav"]


@dataclass
class ReconstructionConfig:
    """MindEye's reconstruction table (eval/reconstruction.py): which metrics, and where each network's weights
    are. Only local files are read: ``None`` looks in the torch hub cache under torchvision's file name."""

    metrics: list[ReconstructionMetric] = field(default_factory=lambda: ["pixcorr", "ssim"])  # network-free: offline
    alexnet_weights: str | None = None  # alexnet2, alexnet5: torchvision alexnet-owt-7be5be79.pth
    inception_weights: str | None = None  # inception: torchvision inception_v3_google-0cc3c7bd.pth
    effnet_weights: str | None = None  # effnet: torchvision efficientnet_b1-c27df63c.pth
    swav_weights: str | None = None  # swav: facebookresearch/swav swav_800ep_pretrain.pth.tar
    clip_weights: str | None = None  # clip: an OpenCLIP checkpoint of clip_model, OpenAI's weights (needs open_clip)
    clip_model: str = "ViT-L-14"  # the OpenCLIP architecture; MindEye's is ViT-L-14 (another is not comparable)
    random_networks: bool = False  # tests only: random weights, flagged in metrics.json (numbers not comparable)

    def check(self) -> None:
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"eval.reconstruction.metrics lists a metric twice: {self.metrics}")


@dataclass
class EvalConfig:
    """The evaluator: which trials, how many generations, and the metrics' parameters."""

    split: Literal["val", "test"] = "test"  # model selection uses val; test is reported once
    max_trials: int = 0  # 0 = every trial of the split
    images_per_trial: int = 1
    batch_size: int = 16  # trials per generation batch (per process)
    sampler: Sampler | None = None  # None: model.diffusion.sampler
    sample_steps: int | None = None  # None: model.diffusion.sample_steps
    guidance_scale: float | None = None  # None: model.diffusion.guidance_scale
    inception_weights: str | None = None  # FID Inception (pt_inception-2015-12-05) file; None: torch hub cache
    random_inception: bool = False  # tests only: same architecture, random weights (numbers not comparable)
    inception_metrics: bool = True  # IS/FID/KID; false skips them and needs no Inception weights (offline quickstart)
    # the real images FID/KID compare with, each distinct image once: the evaluated trials' stimuli, or every
    # image of the evaluated classes in the corpus (all splits, training images included)
    reference: Literal["test_images", "class_images"] = "test_images"
    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    n_way: int = 0  # n-way top-k accuracy of generated images under the teacher; 0 = all classes
    top_k: int = 1
    grid_trials: int = 8  # trials shown in grid.png
    seed: int = 0
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)

    def check(self) -> None:
        self.reconstruction.check()


@dataclass
class TuneConfig:
    """``eeg2im tune``: sampler settings swept on the val split; the best by ``metric`` goes into the release."""

    samplers: list[Literal["ddim", "dpm"]] = field(default_factory=lambda: ["ddim", "dpm"])
    sample_steps: list[int] = field(default_factory=lambda: [25, 50])
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    # the criterion (eval/metric_info.py says which way is better); fid/kid/inception_score need
    # eval.inception_metrics, hue_error/brightness_error a corpus with recorded attributes
    metric: Literal["generated_n_way_top_k", "hist_intersection", "ssim", "pixel_correlation", "hue_emd",
                    "hue_error", "brightness_error", "fid", "kid", "inception_score"] = "generated_n_way_top_k"
    max_trials: int = 0  # val trials per candidate; 0 = every val trial

    def check(self, inception_metrics: bool) -> None:
        if not (self.samplers and self.sample_steps and self.guidance_scales):
            raise ConfigError("tune.samplers, tune.sample_steps and tune.guidance_scales must each list at least one value")
        if min(self.sample_steps) < 1 or min(self.guidance_scales) < 0 or self.max_trials < 0:
            raise ConfigError(f"tune.sample_steps must be >= 1, tune.guidance_scales >= 0 and tune.max_trials >= 0, "
                              f"got {self.sample_steps}, {self.guidance_scales}, {self.max_trials}")
        if self.metric in ("fid", "kid", "inception_score") and not inception_metrics:
            raise ConfigError(f"tune.metric={self.metric} needs eval.inception_metrics=true")


@dataclass
class ProtocolConfig:
    """``eeg2im protocol``: evaluation protocols that rule out leakage (docs/protocols.md)."""

    alpha: float = 0.01  # one-sided binomial test level: "above chance", and a control "leaks"
    subjects: list[int] | None = None  # loso, retrieval: the test subjects (folds) to run; None: every subject
    heldout_classes: list[str] | None = None  # held-out-classes: the unseen classes; None: drawn with seed
    heldout_fraction: float = 0.2  # share of classes drawn when heldout_classes is None (>= 2 of them)
    lowpass_hz: float = 1.0  # drift control: the classifier sees only EEG content below this frequency
    prestimulus_window: tuple[int, int] | None = None  # drift control: [start, stop) samples before stimulus
    # onset in the stored trials (THINGS-EEG2: [0, 20]); None: the corpus has none and that control is skipped
    seed: int = 0  # which classes are held out when heldout_classes is None
    min_train_margin: float = 0.2  # controls' positive control: a control's classifier must beat its training
    # split's chance by this much (and significantly), or its verdict is "inconclusive", never "no leakage"
    deep_controls: bool = True  # controls: retrain the EEG encoder per control; false: the drift probe only (seconds)
    control_steps: int | None = None  # controls: EEG encoder steps (cross-entropy only); None: train.highlevel.steps
    # retrieval: intra-subject (one model per subject) and/or inter-subject (the subject left out of training),
    # never pooled together; an image's repetitions averaged per subject before embedding (THINGS-EEG2 practice)
    retrieval_modes: list[Literal["intra", "inter"]] = field(default_factory=lambda: ["intra", "inter"])
    average_repetitions: bool = True
    retrieval_top_k: list[int] = field(default_factory=lambda: [1, 5])

    def check(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.heldout_fraction < 1 or not self.lowpass_hz > 0:
            raise ConfigError(f"protocol.alpha and protocol.heldout_fraction must be in (0, 1) and protocol.lowpass_hz "
                              f"> 0, got {self.alpha}, {self.heldout_fraction}, {self.lowpass_hz}")
        window = self.prestimulus_window
        if window is not None and not 0 <= window[0] < window[1]:
            raise ConfigError(f"protocol.prestimulus_window must be [start, stop) with 0 <= start < stop, "
                              f"got {list(window)}")
        if self.heldout_classes is not None and len(set(self.heldout_classes)) != len(self.heldout_classes):
            raise ConfigError(f"protocol.heldout_classes lists a class twice: {self.heldout_classes}")
        if not 0 <= self.min_train_margin < 1 or (self.control_steps is not None and self.control_steps < 1):
            raise ConfigError(f"protocol.min_train_margin must be in [0, 1) and protocol.control_steps >= 1 (or null), "
                              f"got {self.min_train_margin}, {self.control_steps}")
        if not self.retrieval_modes or len(set(self.retrieval_modes)) != len(self.retrieval_modes):
            raise ConfigError(f"protocol.retrieval_modes must name intra and/or inter once each, got {self.retrieval_modes}")
        if not self.retrieval_top_k or min(self.retrieval_top_k) < 1:
            raise ConfigError(f"protocol.retrieval_top_k must list k >= 1, got {self.retrieval_top_k}")


@dataclass
class Config:
    """Everything one run needs; ``run_dir`` receives all of its outputs."""

    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def validate(self) -> Config:
        """Cross-field checks that the per-field types cannot express, section by section."""
        self.data.check()
        self.synth.check()
        self.train.check()
        self.model.diffusion.check()
        self.model.highlevel.lora.check("model.highlevel.lora")
        self.model.lowlevel.lora.check("model.lowlevel.lora")
        self.eval.check()
        self.tune.check(self.eval.inception_metrics)
        self.protocol.check()
        return self


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against (and minimally converted to) the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args or (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}: {list(value)!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            where = f"'{prefix}'" if prefix else "the top level"
            raise ConfigError(f"unknown key '{key}'; valid keys in {where}: {', '.join(names)}")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON dumps and model cards."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Patch nested ``values`` with ``a.b=c`` strings; the right side is parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        dotted, raw = item.split("=", 1)
        node = values
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(exc)}") from None
    return values


def _yaml_problem(exc: yaml.YAMLError, path: Path | None = None) -> str:
    """PyYAML's error as one line, ``file:line:column: problem`` (its own text spans many lines and
    names "<unicode string>")."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(filter(None, [getattr(exc, "context", None), getattr(exc, "problem", None)])) or str(exc)
    where = f"{path}:" if path is not None else ""
    if mark is not None:
        where += f"{mark.line + 1}:{mark.column + 1}:"
    return f"{where} {problem}".strip()


def config_from_dict(values: dict) -> Config:
    """A validated :class:`Config` from plain nested data (e.g. a release's config.yaml)."""
    return _build(Config, values).validate()


def merge_dicts(base: dict, patch: dict) -> dict:
    """``base`` patched by ``patch``, nested mappings merged key by key (inputs unchanged)."""
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = merge_dicts(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def read_yaml_values(path: str | Path, _seen: tuple = ()) -> dict:
    """A config file's values with its ``base:`` chain resolved: ``base`` names another config
    (relative to this file) whose values this file's values patch, section by section."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops: {' -> '.join(str(p) for p in (*_seen, path.resolve()))}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_yaml_problem(exc, path)} (invalid YAML)") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path to another config, got {base!r}")
    return merge_dicts(read_yaml_values(path.parent / base, (*_seen, path.resolve())), values)


def given_keys(path: str | Path | None = None, overrides: list[str] | None = None) -> set[str]:
    """The dotted keys (``data.split_by``) that a config file (with its ``base:`` chain) or an
    override sets: what a user asked for, as opposed to dataclass defaults."""
    def walk(node: dict, prefix: str):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            yield dotted
            if isinstance(value, dict):
                yield from walk(value, dotted + ".")
    values = read_yaml_values(path) if path is not None else {}
    return set(walk(apply_overrides(values, list(overrides or [])), ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML, with its ``base:`` chain), apply dotted ``overrides`` and return the
    validated :class:`Config`."""
    values = read_yaml_values(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, list(overrides or [])))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
