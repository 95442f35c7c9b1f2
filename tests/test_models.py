"""Models: shapes and gradients at tiny sizes, offline teacher weights, FiLM conditioning,
attention backend choice and guided sampling."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from eeg2im_scale.config import DiffusionConfig, HighLevelConfig, LowLevelConfig, TeacherConfig, load_config
from eeg2im_scale.models import (BACKBONES, AttentionBackendError, FiLMUNet, HighLevelEncoder, ImageAutoencoder,
                                 LowLevelEncoder, WeightsNotFoundError, apply_attention_backend, build_backbone,
                                 build_teacher, diffusion_training_target, from_unit_range, guided_prediction,
                                 make_sampling_scheduler, make_train_scheduler, sample, select_attention_backend,
                                 to_unit_range)
from eeg2im_scale.models import attention as attention_module

CHANS, TIMES, SFREQ, CLASSES, BATCH = 8, 128, 128.0, 5, 4
IMAGE, COND = 16, 12


pytestmark = pytest.mark.usefixtures("single_thread")


def eeg(batch: int = BATCH, times: int = TIMES) -> torch.Tensor:
    return torch.randn(batch, CHANS, times, generator=torch.Generator().manual_seed(0))


def uint8_images(batch: int = BATCH, size: int = IMAGE) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def assert_all_parameters_get_gradient(module: torch.nn.Module) -> None:
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


# ---------------------------------------------------------------------------------------------
# EEG encoders


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_highlevel_encoder_shapes_and_backward(backbone):
    encoder = HighLevelEncoder(HighLevelConfig(backbone=backbone, embed_dim=16), CHANS, TIMES, SFREQ, CLASSES,
                               teacher_dim=32)
    out = encoder(eeg())
    assert out["embedding"].shape == (BATCH, 16)
    assert out["logits"].shape == (BATCH, CLASSES)
    assert out["teacher_proj"].shape == (BATCH, 32)
    sum(o.square().mean() for o in out.values()).backward()
    assert_all_parameters_get_gradient(encoder)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_lowlevel_encoder_shapes_and_backward(backbone):
    encoder = LowLevelEncoder(LowLevelConfig(backbone=backbone, latent_dim=24), CHANS, TIMES, SFREQ)
    latent = encoder(eeg())
    assert latent.shape == (BATCH, 24)
    latent.square().mean().backward()
    assert_all_parameters_get_gradient(encoder)


def test_too_short_input_names_backbone_and_minimum():
    with pytest.raises(ValueError, match=r"ShallowFBCSPNet needs at least 99 time points.*n_times=64"):
        LowLevelEncoder(LowLevelConfig(backbone="ShallowFBCSPNet"), CHANS, 64, SFREQ)
    build_backbone("ShallowFBCSPNet", CHANS, 99, SFREQ, 4)  # the reported minimum really builds


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="EEGNet"):
        build_backbone("ResNet", CHANS, TIMES, SFREQ, 4)


# ---------------------------------------------------------------------------------------------
# Image autoencoder and pixel range


def test_unit_range_round_trip():
    images = uint8_images()
    unit = to_unit_range(images)
    assert unit.dtype == torch.float32 and unit.min() >= -1 and unit.max() <= 1
    assert torch.equal(from_unit_range(unit), images)
    with pytest.raises(TypeError):
        to_unit_range(unit)


def test_autoencoder_shapes_range_and_backward():
    ae = ImageAutoencoder(LowLevelConfig(latent_dim=10, ae_channels=(8, 16)), IMAGE)
    recon, latent = ae(to_unit_range(uint8_images()))
    assert recon.shape == (BATCH, 3, IMAGE, IMAGE) and latent.shape == (BATCH, 10)
    assert recon.min() >= -1 and recon.max() <= 1
    assert torch.equal(ae.decode(ae.encode(to_unit_range(uint8_images()))), recon)
    recon.square().mean().backward()
    assert_all_parameters_get_gradient(ae)


def test_autoencoder_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        ImageAutoencoder(LowLevelConfig(ae_channels=(8, 16, 32)), 20)


# ---------------------------------------------------------------------------------------------
# Teacher


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it, whatever this machine has cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_teacher_without_pretrained_weights_runs_offline(empty_hub):
    teacher = build_teacher(TeacherConfig(pretrained=False, input_size=32), CLASSES)
    images = uint8_images(batch=2)
    logits, features = teacher(images)
    assert logits.shape == (2, CLASSES) and features.shape == (2, 2048)
    assert teacher.preprocess(images).shape == (2, 3, 32, 32)
    teacher.eval()
    assert torch.allclose(teacher(images)[0], teacher(to_unit_range(images))[0], atol=1e-5)  # uint8 ≡ [-1, 1]
    teacher.train()
    logits.sum().backward()
    assert teacher.trunk.conv1.weight.grad is not None


def test_teacher_pretrained_without_file_explains_where_to_put_it(empty_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        build_teacher(TeacherConfig(pretrained=True), CLASSES)
    message = str(info.value)
    assert "model.teacher.weights" in message and str(empty_hub) in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="model.teacher.weights"):
        build_teacher(TeacherConfig(pretrained=True, weights=str(empty_hub / "missing.pth")), CLASSES)


@pytest.fixture(scope="module")
def resnet_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in resnet50(weights=None).state_dict().items()}


def assert_trunk_matches(teacher, state):
    trunk = teacher.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_teacher_loads_pth_from_config_key(tmp_path, resnet_state, empty_hub):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet_state, path)
    teacher = build_teacher(TeacherConfig(pretrained=True, weights=str(path)), CLASSES)
    assert_trunk_matches(teacher, resnet_state)
    assert teacher.head.out_features == CLASSES  # the 1000-class ImageNet fc is replaced


def test_teacher_loads_safetensors_and_keeps_a_matching_head(tmp_path, resnet_state, empty_hub):
    state = dict(resnet_state, **{"fc.weight": torch.randn(CLASSES, 2048), "fc.bias": torch.randn(CLASSES)})
    path = tmp_path / "teacher.safetensors"
    save_file(state, str(path))
    teacher = build_teacher(TeacherConfig(pretrained=True, weights=str(path)), CLASSES)
    assert_trunk_matches(teacher, resnet_state)
    assert torch.equal(teacher.head.weight, state["fc.weight"])


def test_teacher_loads_from_hub_cache(resnet_state, empty_hub):
    empty_hub.mkdir(parents=True)
    torch.save(resnet_state, empty_hub / "resnet50-0676ba61.pth")
    assert_trunk_matches(build_teacher(TeacherConfig(pretrained=True), CLASSES), resnet_state)


# ---------------------------------------------------------------------------------------------
# FiLM UNet, attention, sampling

DIFFUSION = DiffusionConfig(block_channels=(32, 32), attention_levels=(False, True), layers_per_block=1,
                            num_train_timesteps=100, cond_dropout=0.5)


def film_unet(perturbed: bool = False) -> FiLMUNet:
    torch.manual_seed(0)
    unet = FiLMUNet(DIFFUSION, IMAGE, COND, attention="auto")
    if perturbed:  # as after training: the condition now matters
        torch.nn.init.normal_(unet.cond_projection[-1].weight, std=0.5)
        torch.nn.init.normal_(unet.null_condition, std=1.0)
    return unet


def noisy_batch():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g), torch.randint(0, 100, (BATCH,), generator=g),
            torch.randn(BATCH, COND, generator=g), torch.randn(BATCH, COND, generator=g))


def test_film_unet_structure_follows_config():
    unet = film_unet()
    assert [type(b).__name__ for b in unet.unet.down_blocks] == ["DownBlock2D", "AttnDownBlock2D"]
    assert [type(b).__name__ for b in unet.unet.up_blocks] == ["AttnUpBlock2D", "UpBlock2D"]
    assert unet.unet.config.resnet_time_scale_shift == "scale_shift"  # emb → per-channel scale and shift
    assert unet.null_condition.shape == (COND,)


def test_film_is_identity_at_init_and_conditions_after_perturbation():
    x, t, cond_a, cond_b = noisy_batch()
    unet = film_unet()
    out = unet(x, t, cond_a)
    assert out.shape == x.shape
    assert torch.equal(out, unet(x, t, cond_b))
    unet = film_unet(perturbed=True)
    assert not torch.allclose(unet(x, t, cond_a), unet(x, t, cond_b), atol=1e-4)


def test_conditioning_path_gets_gradient_at_zero_init():
    x, t, cond, _ = noisy_batch()
    unet = film_unet()
    unet(x, t, cond).square().mean().backward()
    assert unet.cond_projection[-1].weight.grad.abs().sum() > 0


def test_null_condition_replaces_dropped_rows():
    x, t, cond, _ = noisy_batch()
    unet = film_unet(perturbed=True)
    drop = torch.tensor([True, False, True, False])
    replaced = unet.apply_null_condition(cond, drop)
    assert torch.equal(replaced[~drop], cond[~drop])
    assert torch.equal(replaced[drop], unet.null_condition.detach().expand(2, COND))
    assert torch.allclose(unet(x, t, cond, drop), unet(x, t, replaced), atol=1e-6)
    rate = unet.random_drop_mask(4000, generator=torch.Generator().manual_seed(0)).float().mean()
    assert abs(rate - DIFFUSION.cond_dropout) < 0.05


def test_attention_backend_selection(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger=attention_module.__name__):
        assert select_attention_backend("auto", "cpu") == "sdpa"
    assert "sdpa" in caplog.text
    assert select_attention_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(AttentionBackendError, match="CUDA"):
        select_attention_backend("xformers", "cpu")
    with pytest.raises(ValueError):
        select_attention_backend("flash", "cpu")
    # on a CUDA machine auto stays SDPA (measured faster); xformers only by name, and only if it imports
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_module, "_xformers_importable", lambda: (False, "No module named 'xformers'"))
    assert select_attention_backend("auto", "cuda") == "sdpa"
    with pytest.raises(AttentionBackendError, match="xformers cannot be imported"):
        select_attention_backend("xformers", "cuda")
    monkeypatch.setattr(attention_module, "_xformers_importable", lambda: (True, ""))
    assert select_attention_backend("auto", "cuda") == "sdpa"
    assert select_attention_backend("xformers", "cuda") == "xformers"


def test_apply_attention_backend_sets_sdpa_processors():
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
    unet = film_unet()
    for layer in (m for m in unet.modules() if isinstance(m, Attention)):
        layer.set_processor(AttnProcessor())  # start from the naive processor: the switch must be seen
    assert apply_attention_backend(unet.unet, "sdpa") > 0
    assert all(isinstance(m.processor, AttnProcessor2_0) for m in unet.modules() if isinstance(m, Attention))


def test_xformers_is_decided_by_the_device_the_unet_runs_on(monkeypatch):
    """Models are built on the CPU and moved: on a machine with a GPU, building the UNet must not
    decide xformers; running it on the CPU is the error, and it names the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_module, "_xformers_importable", lambda: (True, ""))
    unet = FiLMUNet(DIFFUSION, IMAGE, COND, attention="xformers")
    assert unet.attention_backend is None
    with pytest.raises(AttentionBackendError, match="runs on cpu"):
        unet(torch.randn(1, 3, IMAGE, IMAGE), torch.tensor([3]), torch.randn(1, COND))


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sampling_returns_finite_images(sampler):
    unet = film_unet(perturbed=True)
    cond = noisy_batch()[2][:2]
    images = sample(unet, cond, sampler, 3, 3.0, IMAGE, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, IMAGE, IMAGE)
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, sample(unet, cond, sampler, 3, 3.0, IMAGE, torch.Generator().manual_seed(0)))


def test_guidance_scale_one_is_the_conditional_path():
    unet = film_unet(perturbed=True)
    cond = noisy_batch()[2][:2]
    guided = sample(unet, cond, "ddim", 3, 1.0, IMAGE, torch.Generator().manual_seed(0))
    scheduler = make_sampling_scheduler(DIFFUSION, "ddim")
    scheduler.set_timesteps(3)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in scheduler.timesteps:
            images = scheduler.step(unet(images, t, cond), t, images).prev_sample
    assert torch.allclose(guided, images.clamp(-1, 1), atol=1e-6)


def test_guided_prediction_combines_uncond_and_cond():
    unet = film_unet(perturbed=True)
    x, t, cond, _ = noisy_batch()
    with torch.no_grad():
        uncond = unet(x, t[0], cond, torch.ones(BATCH, dtype=torch.bool))
        conditional = unet(x, t[0], cond)
        guided = guided_prediction(unet, x, t[0], cond, 3.0)
    assert torch.allclose(guided, uncond + 3.0 * (conditional - uncond), atol=1e-4)


def test_training_targets():
    clean, timesteps, _, _ = noisy_batch()
    noise = torch.randn_like(clean)
    assert torch.equal(diffusion_training_target(make_train_scheduler(DIFFUSION), clean, noise, timesteps), noise)
    v_scheduler = make_train_scheduler(DiffusionConfig(num_train_timesteps=100, prediction_type="v_prediction"))
    alpha_bar = v_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean
    assert torch.allclose(diffusion_training_target(v_scheduler, clean, noise, timesteps), expected, atol=1e-6)
    x0_scheduler = make_train_scheduler(DiffusionConfig(num_train_timesteps=100, prediction_type="sample"))
    assert torch.equal(diffusion_training_target(x0_scheduler, clean, noise, timesteps), clean)
    with pytest.raises(ValueError, match="ddim"):
        make_sampling_scheduler(DIFFUSION, "euler")


class OracleUNet:
    """Predicts the exact training target for a known clean image: sampling must return that image."""

    def __init__(self, cfg: DiffusionConfig, clean: torch.Tensor):
        self.cfg, self.clean = cfg, clean
        self.alpha_bar = make_train_scheduler(cfg).alphas_cumprod

    def __call__(self, noisy, timestep, cond, drop_mask=None):
        a = self.alpha_bar[int(timestep)]
        noise = (noisy - a.sqrt() * self.clean) / (1 - a).sqrt()
        return {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * self.clean,
                "sample": self.clean}[self.cfg.prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
def test_sampling_with_an_oracle_recovers_the_clean_image(prediction_type, sampler):
    cfg = DiffusionConfig(num_train_timesteps=1000, prediction_type=prediction_type)
    clean = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    out = sample(OracleUNet(cfg, clean), torch.zeros(2, 4), sampler, 10, 1.0, 8, torch.Generator().manual_seed(0))
    assert torch.allclose(out, clean, atol=1e-3)


def test_ddpm_sampling_is_ancestral_and_seeded():
    """DDPM draws fresh noise at every step from the generator: the same seed repeats, another does not."""
    unet, cond = film_unet(perturbed=True), torch.randn(2, COND)

    def run(sampler, seed):
        return sample(unet, cond, sampler, 4, 2.0, IMAGE, torch.Generator().manual_seed(seed))

    assert torch.equal(run("ddpm", 0), run("ddpm", 0)) and not torch.equal(run("ddpm", 0), run("ddpm", 1))
    scheduler = make_sampling_scheduler(unet.cfg, "ddpm")
    assert type(scheduler).__name__ == "DDPMScheduler" and scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("x0_clip, bound", [("none", 3.0), ("clip", 1.0), ("dynamic", 1.0)])
@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
def test_x0_clipping_bounds_every_steps_predicted_clean_image(sampler, x0_clip, bound):
    """A UNet predicting x0 far outside [-1, 1] (guidance overshoot): clip and dynamic thresholding bring
    each step's x0 into range, none leaves it; every sampler alike."""
    cfg = DiffusionConfig(num_train_timesteps=100, prediction_type="sample", x0_clip=x0_clip, x0_dynamic_max=1.5)
    scheduler = make_sampling_scheduler(cfg, sampler)
    scheduler.set_timesteps(4)
    x0 = torch.full((1, 3, 4, 4), 3.0)
    x0[0, 0, 0, 0] = -3.0
    t = scheduler.timesteps[0]
    step = scheduler.step(x0, t, torch.randn(1, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    predicted = getattr(step, "pred_original_sample", None)
    if predicted is None:  # DPM-Solver++ keeps its (thresholded) x0 as the converted model output
        predicted = scheduler.model_outputs[-1]
    assert predicted.abs().max().item() == pytest.approx(bound, rel=1e-5)


def test_flip_and_shift_without_shift_is_one_of_the_four_flips():
    from eeg2im_scale.models.teacher import flip_and_shift

    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    out = flip_and_shift(images, "both", max_shift=0.0)
    variants = torch.stack([images, images.flip(-1), images.flip(-2), images.flip(-1, -2)])  # [4, B, ...]
    matches = (out[None] - variants).abs().amax(dim=(2, 3, 4)) < 1e-5  # [4, B]
    assert matches.any(0).all() and matches.any(1).all()  # every image is a flip; every flip occurs


@pytest.mark.parametrize("flips, allowed", [("horizontal", (0, 1)), ("none", (0,))])
def test_photos_are_never_flipped_upside_down(flips, allowed):
    from eeg2im_scale.models.teacher import flip_and_shift

    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    out = flip_and_shift(images, flips, max_shift=0.0)
    variants = torch.stack([images, images.flip(-1), images.flip(-2), images.flip(-1, -2)])
    matches = (out[None] - variants).abs().amax(dim=(2, 3, 4)) < 1e-5  # [4, B]
    assert matches[list(allowed)].any(0).all() and matches[list(allowed)].any(1).all()
    with pytest.raises(ValueError, match="horizontal"):
        flip_and_shift(images, "vertical")


def test_flip_and_shift_translates_by_at_most_the_limit():
    from eeg2im_scale.models.teacher import flip_and_shift

    images = torch.zeros(32, 3, 16, 16)
    images[:, :, 7:9, 7:9] = 1  # a centred 2x2 dot
    out = flip_and_shift(images, max_shift=0.125)  # up to 2 pixels each way
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    mass = out[:, 0].sum(dim=(1, 2))
    centre_y, centre_x = (out[:, 0] * ys).sum(dim=(1, 2)) / mass, (out[:, 0] * xs).sum(dim=(1, 2)) / mass
    assert (centre_y - 7.5).abs().max() <= 2.01 and (centre_x - 7.5).abs().max() <= 2.01
    assert (centre_y - 7.5).abs().max() > 0.5  # it does move


@pytest.mark.parametrize("condition_on", ["multilevel", "highlevel", "lowlevel"])
def test_condition_on_selects_the_features_that_reach_the_unet(condition_on):
    from eeg2im_scale.models.build import Geometry, build_highlevel, build_lowlevel, build_unet, condition

    cfg = load_config("tests/configs/tiny_train.yaml", [f"model.diffusion.condition_on={condition_on}"])
    geo = Geometry.of_synth(cfg.synth, cfg.data, ["a", "b", "c"])
    high, low, unet = build_highlevel(cfg.model, geo), build_lowlevel(cfg.model, geo)[1], build_unet(cfg.model, geo)
    eeg = torch.randn(2, geo.n_chans, geo.n_times)
    cond = condition(high.eval(), low.eval(), eeg, condition_on)
    assert cond.shape == (2, unet.cond_dim)
    high_part = high(eeg)["embedding"]
    if condition_on != "lowlevel":
        assert torch.allclose(cond[:, :high_part.shape[1]], high_part)
    else:
        assert torch.allclose(cond, low(eeg))


@pytest.mark.parametrize("arch, width", [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v3_small", 1024),
                                         ("efficientnet_b0", 1280)])
def test_teacher_arch_sets_the_feature_width_the_highlevel_encoder_projects_to(arch, width):
    from eeg2im_scale.models.build import Geometry, build_highlevel, build_teacher_model

    cfg = load_config("tests/configs/tiny_train.yaml", [f"model.teacher.arch={arch}"])
    geo = Geometry.of_synth(cfg.synth, cfg.data, ["a", "b", "c"])
    logits, features = build_teacher_model(cfg.model, geo)(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert logits.shape == (2, 3) and features.shape == (2, width)
    assert build_highlevel(cfg.model, geo).teacher_projection.out_features == width


def test_pretrained_resnet18_is_looked_up_under_its_own_name(empty_hub):
    from torchvision.models import resnet18

    from eeg2im_scale.models.teacher import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
        build_teacher(TeacherConfig(arch="resnet18", pretrained=True), 3)
    empty_hub.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), empty_hub / "resnet18-f37072fd.pth")
    assert build_teacher(TeacherConfig(arch="resnet18", pretrained=True), 3).head.in_features == 512


def test_any_torchvision_classifier_is_a_teacher_loaded_from_its_own_cache_file(empty_hub):
    """The classifier (here MobileNetV3's ``classifier.3``) is found by position, dropped from the
    ImageNet state dict, and kept only when it already has our class count."""
    from torchvision.models import mobilenet_v3_small

    from eeg2im_scale.models.teacher import WeightsNotFoundError

    cfg = TeacherConfig(arch="mobilenet_v3_small", pretrained=True, input_size=32)
    with pytest.raises(WeightsNotFoundError, match="mobilenet_v3_small-047dcff4.pth"):
        build_teacher(cfg, 3)
    empty_hub.mkdir(parents=True)
    torch.manual_seed(0)
    imagenet = mobilenet_v3_small(weights=None).state_dict()
    torch.save(imagenet, empty_hub / "mobilenet_v3_small-047dcff4.pth")
    teacher = build_teacher(cfg, 3)
    assert teacher.classifier == "classifier.3" and teacher.head.out_features == 3
    torch.testing.assert_close(teacher.trunk.state_dict()["classifier.0.weight"], imagenet["classifier.0.weight"])
    assert not torch.equal(teacher.head.weight[:3], imagenet["classifier.3.weight"][:3])  # a new head for 3 classes
    with pytest.raises(ValueError, match=r"model.teacher.arch 'resnet51' is not a torchvision classification "
                                         r"model \(nor open_clip:<model>\); torchvision .* has: .*convnext_tiny.*resnet50"):
        build_teacher(TeacherConfig(arch="resnet51"), 3)


def test_an_open_clip_image_tower_is_a_teacher_frozen_or_fine_tuned(tiny_clip, tmp_path):
    """open_clip:<model>: OpenCLIP's image tower (its output, the projected embedding, is the feature),
    CLIP's normalisation and input size, a checkpoint loaded by OpenCLIP's own loader, and a frozen trunk
    that neither learns nor leaves eval mode."""
    import open_clip

    from eeg2im_scale.models.teacher import WeightsNotFoundError, feature_dim, image_encoder

    arch = f"open_clip:{tiny_clip}"
    cfg = TeacherConfig(arch=arch, input_size=224, pretrained=True, freeze_trunk=True)
    with pytest.raises(WeightsNotFoundError, match=f"{arch} needs model.teacher.weights=/path/to/an OpenCLIP"):
        build_teacher(cfg, 3)
    torch.manual_seed(1)
    clip = open_clip.create_model(tiny_clip)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    cfg.weights = str(tmp_path / "clip.pt")
    teacher = build_teacher(cfg, 3)
    assert feature_dim(arch) == 24 and teacher.head.in_features == 24
    torch.testing.assert_close(teacher.trunk.state_dict(), clip.visual.state_dict())
    images = uint8_images(batch=2)
    logits, features = teacher(images)
    with torch.no_grad():
        expected = clip.encode_image(teacher.preprocess(images))
    torch.testing.assert_close(features, expected)  # CLIP's own image embedding, CLIP's normalisation
    logits.sum().backward()
    assert all(p.grad is None for p in teacher.trunk.parameters()) and teacher.head.weight.grad is not None
    assert not teacher.train().trunk.training and teacher.head.training
    assert image_encoder(cfg) == f"{arch} (pretrained, frozen, head trained on the training images)"
    with pytest.raises(ValueError, match=f"model.teacher.input_size=32, but {arch} takes 224 px images only"):
        build_teacher(TeacherConfig(arch=arch, input_size=32), 3)
    with pytest.raises(ValueError, match="OpenCLIP .* has no model 'ViT-Q-99'"):
        build_teacher(TeacherConfig(arch="open_clip:ViT-Q-99", input_size=224), 3)


def test_any_braindecode_model_is_a_backbone_with_its_kwargs_and_unknown_names_list_the_choices():
    from eeg2im_scale.models.eeg_encoders import braindecode_models

    assert {"EEGNeX", "Labram", "CBraMod", "EEGPT", "BIOT"} <= set(braindecode_models())
    net = build_backbone("EEGNeX", 8, 128, 128.0, 6)
    assert net(torch.randn(2, 8, 128)).shape == (2, 6)
    small = build_backbone("ShallowFBCSPNet", 8, 128, 128.0, 6, {"n_filters_time": 8, "n_filters_spat": 8})
    default = build_backbone("ShallowFBCSPNet", 8, 128, 128.0, 6)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in default.parameters())
    with pytest.raises(ValueError, match=r"unknown EEG backbone 'Nope'; braindecode .* has: .*EEGNeX.*Labram"):
        build_backbone("Nope", 8, 128, 128.0, 6)


def test_backbone_weights_load_offline_from_a_save_pretrained_directory(tmp_path, monkeypatch):
    """braindecode's own format: save_pretrained -> backbone_weights; the head is replaced for our output
    size, a wrong architecture or a missing directory is one clear error, and nothing reaches the Hub."""
    from braindecode.models import ShallowFBCSPNet

    from eeg2im_scale.models.eeg_encoders import BackboneWeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    source = ShallowFBCSPNet(n_chans=8, n_outputs=5, n_times=128, sfreq=128.0, input_window_seconds=1.0)
    source.save_pretrained(tmp_path / "pretrained")
    cfg = HighLevelConfig(embed_dim=16, backbone_weights=str(tmp_path / "pretrained"))
    encoder = HighLevelEncoder(cfg, 8, 128, 128.0, 3, teacher_dim=8)
    loaded = encoder.backbone.state_dict()
    shared = [k for k, v in source.state_dict().items() if loaded[k].shape == v.shape]
    assert shared and all(torch.equal(loaded[k], source.state_dict()[k]) for k in shared)
    assert encoder(torch.randn(2, 8, 128))["embedding"].shape == (2, 16)  # head replaced: 5 -> 16 outputs
    random_init = HighLevelEncoder(cfg, 8, 128, 128.0, 3, teacher_dim=8, pretrained=False)  # a release rebuilds it so
    assert random_init.state_dict().keys() == encoder.state_dict().keys()
    with pytest.raises(BackboneWeightsError, match="not a save_pretrained directory and not in the local Hugging Face"):
        HighLevelEncoder(HighLevelConfig(backbone_weights=str(tmp_path / "absent")), 8, 128, 128.0, 3, teacher_dim=8)
    other = HighLevelConfig(embed_dim=16, backbone_weights=str(tmp_path / "pretrained"),
                            backbone_kwargs={"n_filters_time": 8})
    with pytest.raises(ValueError, match="differs from the one the config describes.*backbone_kwargs"):
        HighLevelEncoder(other, 8, 128, 128.0, 3, teacher_dim=8)
