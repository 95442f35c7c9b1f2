"""DDPM training helpers and guided sampling with diffusers schedulers.

Training and sampling schedulers are built from the same :class:`DiffusionConfig`, so the noise
schedule and prediction type a model was trained with are the ones it is sampled with.
"""

from __future__ import annotations

import torch
import typing

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..config import DiffusionConfig, Sampler
from .film_unet import FiLMUNet

SAMPLERS = dict(zip(typing.get_args(Sampler), (DDIMScheduler, DPMSolverMultistepScheduler, DDPMScheduler)))


def make_train_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The DDPM forward process used in training (``add_noise``, ``get_velocity``)."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def make_sampling_scheduler(cfg: DiffusionConfig, name: str) -> DDIMScheduler | DPMSolverMultistepScheduler | DDPMScheduler:
    """DDIM (deterministic, eta=0), DPM-Solver++ (2nd order) or DDPM ancestral sampling over the
    training noise schedule, with ``cfg.x0_clip`` applied to every step's predicted x0.

    ``trailing`` timestep spacing makes the first step start at the last training timestep
    (pure noise) even with few steps; the default ``leading`` spacing would start 3 steps out
    of 1000 at t=666, from an image that is not noise at all. Clipping is diffusers' thresholding
    for every sampler (``sample_max_value=1`` makes it a plain clip to [-1, 1]), so the three
    samplers treat x0 alike (DDIM's and DDPM's own ``clip_sample`` is off).
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    clip = {"none": {"thresholding": False},
            "clip": {"thresholding": True, "sample_max_value": 1.0},
            "dynamic": {"thresholding": True, "dynamic_thresholding_ratio": cfg.x0_dynamic_ratio,
                        "sample_max_value": cfg.x0_dynamic_max}}[cfg.x0_clip]
    if name != "dpm":
        clip["clip_sample"] = False
    return SAMPLERS[name](num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                          prediction_type=cfg.prediction_type, timestep_spacing="trailing", **clip)


def diffusion_training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                              timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses at ``timesteps``: the noise (epsilon), the velocity v = √ᾱ·ε − √(1−ᾱ)·x₀,
    or the clean image x₀ (sample)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {kind!r}; use epsilon, v_prediction or sample")


def noised_input_and_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                            timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy UNet input x_t and the regression target at ``timesteps``, in float32 whatever the
    dtype of ``clean`` and ``noise``.

    In bf16 or fp16, ᾱ near 1 rounds to 1: with ``squaredcos_cap_v2`` x_t would equal x_0 for
    t <= 20 of 1000 and σ would be off by more than 10 % for dozens more. The caller casts only the
    network input to the engine's dtype.
    """
    clean, noise = clean.float(), noise.float()
    return scheduler.add_noise(clean, noise, timesteps), diffusion_training_target(scheduler, clean, noise, timesteps)


def guided_prediction(unet: FiLMUNet, noisy: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                      guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + s·(cond − uncond), both halves in one batched forward.

    At ``guidance_scale == 1`` the formula reduces to the conditional prediction, so the
    unconditional half is not computed at all.
    """
    if guidance_scale == 1:
        return unet(noisy, timestep, cond)
    batch = len(cond)
    drop_mask = torch.arange(2 * batch, device=cond.device) < batch  # first half: null condition
    uncond, conditional = unet(torch.cat([noisy, noisy]), timestep, torch.cat([cond, cond]), drop_mask).chunk(2)
    return uncond + guidance_scale * (conditional - uncond)


@torch.no_grad()
def sample(unet: FiLMUNet, cond: torch.Tensor, scheduler_name: str, steps: int, guidance_scale: float,
           image_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate one image per row of ``cond`` [B, cond_dim] → [B, 3, image_size, image_size] in [-1, 1].

    The sample and every scheduler step stay in float32 (as in training, a bf16 schedule would drop
    the last, small-σ steps); only the UNet's input is cast to ``cond``'s dtype, the network's.
    Runs in the module's current mode; call ``unet.eval()`` first if that matters (the default
    UNet has no dropout or batch statistics, so it does not).
    """
    return sample_with(unet, cond, make_sampling_scheduler(unet.cfg, scheduler_name), steps, guidance_scale, image_size,
                       generator)


def sample_with(unet: FiLMUNet, cond: torch.Tensor, scheduler, steps: int, guidance_scale: float, image_size: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`sample` with a given diffusers scheduler (a pipeline's, which its user may swap)."""
    scheduler.set_timesteps(steps, device=cond.device)
    images = randn_tensor((len(cond), 3, image_size, image_size), generator=generator, device=cond.device,
                          dtype=torch.float32) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(images, timestep).to(cond.dtype)
        prediction = guided_prediction(unet, model_input, timestep, cond, guidance_scale).float()
        images = scheduler.step(prediction, timestep, images, generator=generator).prev_sample
    return images.clamp(-1, 1)
