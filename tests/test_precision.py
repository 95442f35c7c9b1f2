"""bf16 training keeps what must stay float32: the diffusion noise schedule and its targets, and
BatchNorm statistics. Real DeepSpeed engines (one rank, gloo) where the engine matters."""

from __future__ import annotations

import pytest
import torch

from eeg2im_scale.config import DiffusionConfig, HighLevelConfig, LowLevelConfig, ModelConfig
from eeg2im_scale.models import FiLMUNet, HighLevelEncoder, LowLevelEncoder, make_train_scheduler, to_unit_range
from eeg2im_scale.models.precision import cast_for_training
from eeg2im_scale.train import stages
from eeg2im_scale.train.stages import DiffusionModule

CHANS, TIMES, SFREQ, IMAGE, STEPS = 4, 128, 128.0, 8, 1000
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # the largest relative error of rounding a float to bf16 (8-bit significand)


pytestmark = pytest.mark.usefixtures("single_thread")


def diffusion_module(dtype: torch.dtype) -> DiffusionModule:
    """The diffusion stage's module as ``train_stage`` prepares it, on tiny real models."""
    torch.manual_seed(0)
    model = ModelConfig(highlevel=HighLevelConfig(embed_dim=8), lowlevel=LowLevelConfig(latent_dim=4),
                        diffusion=DiffusionConfig(block_channels=(16, 16), attention_levels=(False, False),
                                                  layers_per_block=1, num_train_timesteps=STEPS))
    high = HighLevelEncoder(model.highlevel, CHANS, TIMES, SFREQ, 3, teacher_dim=8).eval().requires_grad_(False)
    low = LowLevelEncoder(model.lowlevel, CHANS, TIMES, SFREQ).eval().requires_grad_(False)
    unet = FiLMUNet(model.diffusion, IMAGE, 12, "auto")
    return cast_for_training(DiffusionModule(unet, high, low, model.diffusion, dtype), dtype)


def batch(n: int) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"eeg": torch.randn(n, CHANS, TIMES, generator=g),
            "image": torch.randint(0, 256, (n, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=g)}


def test_bf16_training_input_is_noisy_at_every_timestep(monkeypatch):
    """With the schedule in bf16, ᾱ rounds to 1 for t <= 20 (squaredcos_cap_v2): the UNet saw the
    clean image. Every timestep's input must differ from x0 and equal the float32 x_t up to the one
    rounding of the result to bf16."""
    module = diffusion_module(torch.bfloat16)
    data = batch(STEPS)
    monkeypatch.setattr(torch, "randint", lambda *args, device=None: torch.arange(STEPS, device=device))
    seen = {}
    module.unet.register_forward_pre_hook(lambda _, args: seen.update(input=args[0]))
    real_loss = stages.diffusion_loss

    def recording_loss(prediction, target):
        seen["target"] = target
        return real_loss(prediction, target)

    monkeypatch.setattr(stages, "diffusion_loss", recording_loss)
    module(data)

    x = seen["input"]
    assert x.dtype == torch.bfloat16 and seen["target"].dtype == torch.float32
    clean, noise = to_unit_range(data["image"]).double(), seen["target"].double()  # epsilon: the target is the noise
    alpha_bar = make_train_scheduler(module.unet.cfg).alphas_cumprod.double().view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
    differs = (x != clean.to(torch.bfloat16)).flatten(1).any(dim=1)
    assert differs.all(), f"x_t == x_0 at timesteps {torch.nonzero(~differs).flatten().tolist()}"
    beyond = ((x.double() - expected).abs() > BF16_UNIT_ROUNDOFF * expected.abs() + 1e-6).flatten(1).any(dim=1)
    assert not beyond.any(), f"x_t off beyond bf16 rounding at timesteps {torch.nonzero(beyond).flatten().tolist()}"


def one_rank_engine(module: torch.nn.Module, precision: str, lr: float = 1e-3):
    from eeg2im_scale.config import TrainConfig, StageConfig
    import deepspeed

    from eeg2im_scale.train.distributed import init_distributed
    from eeg2im_scale.train.ds_config import build_deepspeed_config

    init_distributed(timeout_s=60)
    train = TrainConfig(precision=precision, zero_stage=2)
    config = build_deepspeed_config(train, StageConfig(steps=100, lr=lr, warmup_steps=0), 16, 1, on_gpu=False)
    engine, *_ = deepspeed.initialize(model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
                                      config=config)
    return engine


def test_batchnorm_statistics_stay_float32_under_a_bf16_engine():
    """Inputs with mean 100: a bf16 running mean moves in steps of 0.5 and loses momentum-sized updates."""
    torch.manual_seed(0)
    module = cast_for_training(torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1)), torch.bfloat16)
    engine = one_rank_engine(module, "bf16")
    g = torch.Generator().manual_seed(3)
    mean = torch.zeros(3, dtype=torch.float64)
    for _ in range(20):
        x = (torch.randn(16, 3, generator=g) * 0.2 + 100.3).to(torch.bfloat16)
        engine.backward(engine(x).float().square().mean())
        engine.step()
        mean = 0.9 * mean + 0.1 * x.double().mean(dim=0)
    norm = engine.module[0]
    assert norm.running_mean.dtype == norm.running_var.dtype == torch.float32
    assert torch.allclose(norm.running_mean.double(), mean, rtol=1e-6)
    engine.destroy()


def test_bf16_diffusion_loss_follows_the_fp32_curve():
    """A short run from the same weights and draws: bf16 changes only roundings, so the loss curves match."""
    curves = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        engine = one_rank_engine(diffusion_module(dtype), precision)
        torch.manual_seed(5)
        losses = []
        for step in range(30):
            loss, _ = engine(batch(16))
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        curves[precision] = torch.tensor(losses)
        engine.destroy()
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert fp32[-10:].mean() < fp32[:5].mean()  # it trains
    # per step within 5 % (bf16 weights and activations round at 2^-9), and no drift on average
    assert ((bf16 - fp32).abs() <= 0.05 * fp32).all(), (fp32.tolist(), bf16.tolist())
    assert abs(bf16.mean() - fp32.mean()) <= 0.01 * fp32.mean()
