"""DeepSpeed training of every stage with real engines: 2 CPU ranks (gloo), ZeRO-2 and ZeRO-3.

Each run trains the tiny config (tests/configs/tiny_train.yaml) on a synthesized corpus through
the real launchers (``deepspeed --num_gpus 2`` and ``torchrun``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eeg2im_scale.config import STAGES, load_config
from eeg2im_scale.data.corpus import write_synthetic
from eeg2im_scale.data.manifest import Manifest
from eeg2im_scale.models.pipeline import EEG2IMPipeline
from eeg2im_scale.train.command import main as train_main

CONFIG = "tests/configs/tiny_train.yaml"
BIN = Path(sys.executable).parent
STEPS = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "corpus"
    write_synthetic(load_config(CONFIG).synth, root)
    return root


def launch(launcher: str, run_dir: Path, corpus: Path, *overrides: str, resume: bool = False):
    command = {
        "deepspeed": [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(_port())],
        "torchrun": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"],
    }[launcher]
    args = [*command, "launchers/train.py", "--config", CONFIG, f"run_dir={run_dir}", f"data.root={corpus}",
            *overrides, *(["--resume"] if resume else [])]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(run_dir: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stages" / stage / "stats.jsonl").read_text().splitlines()]


def steps_override(steps: int) -> list[str]:
    return [f"train.{s}.steps={steps}" for s in STAGES] + [f"train.log_every={steps // 4}"]


def assert_trained_and_released(run_dir: Path, corpus: Path):
    for stage in STAGES:
        records = stats(run_dir, stage)
        assert [r["step"] for r in records] == [6, 12, 18, 24]
        assert records[-1]["loss/loss"] < records[0]["loss/loss"], f"{stage}: loss did not go down: {records}"
        assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait_fraction"] < 1 and r["tflops_per_s"] > 0
                   and r["peak_memory_mib"] > 0 for r in records)
        assert (run_dir / "stages" / stage / "final.safetensors").is_file()
        assert json.loads((run_dir / "stages" / stage / "validation.json").read_text())["samples"] == \
            Manifest(corpus).count("image", "val")
    pipeline = EEG2IMPipeline(run_dir / "model")
    trial = np.random.default_rng(0).normal(0, 10, (16, 128)).astype(np.float32)
    images = pipeline.generate(trial, num_images=2, steps=3, seed=1)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, pipeline.generate(trial, num_images=2, steps=3, seed=1))


def test_all_stages_zero2_under_the_deepspeed_launcher(corpus, tmp_path):
    run_dir = tmp_path / "run"
    launch("deepspeed", run_dir, corpus, "train.zero_stage=2", *steps_override(STEPS))
    assert_trained_and_released(run_dir, corpus)
    # the release works on its own: the CLI generates images from a trial file
    trial = tmp_path / "trial.npy"
    np.save(trial, np.zeros((16, 128), np.float32))
    out = subprocess.run([str(BIN / "eeg2im"), "generate", "--model", str(run_dir / "model"), "--eeg", str(trial),
                          "--out", str(tmp_path / "gen"), "--num-images", "2", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "gen").glob("*.png"))) == 2


def test_all_stages_zero3_bf16_under_torchrun(corpus, tmp_path):
    run_dir = tmp_path / "run"
    launch("torchrun", run_dir, corpus, "train.zero_stage=3", "train.precision=bf16", *steps_override(STEPS))
    assert_trained_and_released(run_dir, corpus)


@pytest.mark.parametrize("stage", ["lowlevel"])
def test_resumed_run_continues_with_the_same_losses(corpus, tmp_path, stage):
    common = [f"train.stage={stage}", f"train.{stage}.steps=8", "train.log_every=1", "train.checkpoint_every=4"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    launch("torchrun", reference, corpus, *common)
    launch("torchrun", interrupted, corpus, *common, "train.halt_after=3")
    assert [r["step"] for r in stats(interrupted, stage)] == [1, 2, 3]
    assert not (interrupted / "stages" / stage / "final.safetensors").exists()
    launch("torchrun", interrupted, corpus, *common, resume=True)
    expected, got = stats(reference, stage), stats(interrupted, stage)
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(expected, got):
        assert a["loss/loss"] == pytest.approx(b["loss/loss"], rel=1e-6, abs=1e-7), (a, b)


def test_later_stage_without_earlier_exports_fails_before_any_work(tmp_path, capsys):
    code = train_main(["--config", CONFIG, f"run_dir={tmp_path / 'run'}", "train.stage=diffusion",
                       f"data.root={tmp_path / 'never_written'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.stage=diffusion needs" in err and "lowlevel/final.safetensors" in err and "train.stage=all" in err
    assert not (tmp_path / "never_written").exists()


def test_dry_run_prints_the_resolved_config(capsys):
    assert train_main(["--config", CONFIG, "train.zero_stage=3", "--dry-run"]) == 0
    assert "zero_stage: 3" in capsys.readouterr().out


def test_a_user_json_choosing_deepspeeds_adam_drops_torchs_fused_flag(tmp_path):
    """FusedAdam / DeepSpeedCPUAdam take no ``fused`` argument, and torch refuses it with ``foreach``."""
    from eeg2im_scale.train.ds_config import build_deepspeed_config

    for params in ({"torch_adam": False}, {"foreach": True}):
        patch = tmp_path / "patch.json"
        patch.write_text(json.dumps({"optimizer": {"params": params}}))
        cfg = load_config(CONFIG, [f"train.deepspeed_config={patch}"])
        built = build_deepspeed_config(cfg.train, cfg.train.teacher, 8, 1, on_gpu=False)["optimizer"]["params"]
        assert "fused" not in built and built["lr"] == cfg.train.teacher.lr, built
    cfg = load_config(CONFIG)
    assert build_deepspeed_config(cfg.train, cfg.train.teacher, 8, 1, on_gpu=False)["optimizer"]["params"]["fused"]


def test_fp16_on_cpu_is_refused_with_the_fix():
    from eeg2im_scale.config import ConfigError
    from eeg2im_scale.train.ds_config import build_deepspeed_config

    cfg = load_config(CONFIG, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="use bf16 or fp32"):
        build_deepspeed_config(cfg.train, cfg.train.teacher, 8, 2, on_gpu=False)
    ds = build_deepspeed_config(load_config(CONFIG, ["train.deepspeed_config=configs/deepspeed/zero3_bf16.json",
                                                     "train.grad_accum=2"]).train, cfg.train.teacher, 8, 2, False)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] and ds["train_batch_size"] == 32


def one_rank_engine(cfg, stage, model):
    """A real DeepSpeed engine in this process (world size 1) from the repo's generated config."""
    import deepspeed

    from eeg2im_scale.train.distributed import init_distributed
    from eeg2im_scale.train.ds_config import build_deepspeed_config

    init_distributed(timeout_s=60)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=build_deepspeed_config(cfg.train, stage, 2, 1, on_gpu=False))
    return engine


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_engines_run_adamw_as_one_fused_kernel(zero_stage):
    """ZeRO-1/2 hand AdamW one flat fp32 partition; unfused, every step made parameter-sized
    temporaries (8x slower on the CPU). The real engine must call the fused kernel, and its
    update must be AdamW's."""
    import torch

    cfg = load_config(CONFIG, [f"train.zero_stage={zero_stage}", "train.grad_clip=0", "train.lowlevel.warmup_steps=0"])
    model = torch.nn.Linear(8, 4)
    reference = torch.nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    stage = cfg.train.lowlevel
    engine = one_rank_engine(cfg, stage, model)
    basic = engine.optimizer.optimizer if zero_stage else engine.optimizer
    assert isinstance(basic, torch.optim.AdamW) and basic.defaults["fused"]
    x, lr = torch.randn(2, 8), engine.get_lr()[0]
    assert lr > 0
    with torch.profiler.profile() as prof:
        engine.backward(engine(x).square().sum())
        engine.step()
    assert any(e.key == "aten::_fused_adamw_" for e in prof.key_averages())
    optimizer = torch.optim.AdamW(reference.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=stage.weight_decay)
    reference(x).square().sum().backward()
    optimizer.step()
    for ours, theirs in zip(engine.module.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)
    engine.destroy()


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_zero_warmup_steps_start_at_the_full_rate(schedule):
    """DeepSpeed's schedulers refuse 0 warm-up steps (the engine failed to build) and start warm-up
    at their minimum; the config documents 0 as "off": the first step must run at stage.lr."""
    import torch

    for warmup, steps in ((0, 20), (5, 1), (5, 2)):
        cfg = load_config(CONFIG, [f"train.lr_schedule={schedule}", f"train.lowlevel.warmup_steps={warmup}",
                                   f"train.lowlevel.steps={steps}"])
        engine = one_rank_engine(cfg, cfg.train.lowlevel, torch.nn.Linear(2, 2))
        assert engine.get_lr()[0] == pytest.approx(cfg.train.lowlevel.lr), (warmup, steps)
        engine.lr_scheduler.step()  # the rate of the second step
        assert engine.get_lr()[0] == pytest.approx(cfg.train.lowlevel.lr), (warmup, steps)
        engine.destroy()


def test_single_process_zero0_with_gradient_accumulation(corpus, tmp_path):
    """No launcher, no ZeRO partitioning (the export is the module's own state dict); steps count
    optimizer steps, each over grad_accum micro-batches; TensorBoard mirrors stats.jsonl."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    assert train_main(["--config", CONFIG, f"run_dir={run_dir}", f"data.root={corpus}", "train.stage=lowlevel",
                       "train.zero_stage=0", "train.grad_accum=2", "train.lowlevel.steps=4", "train.log_every=2"]) == 0
    weights = load_file(str(run_dir / "stages" / "lowlevel" / "final.safetensors"))
    assert any(k.startswith("autoencoder.") for k in weights) and any(k.startswith("encoder.") for k in weights)
    records = stats(run_dir, "lowlevel")
    assert [r["step"] for r in records] == [2, 4]
    assert records[-1]["kimg"] == pytest.approx(4 * 8 * 2 / 1000)  # steps x micro-batch x accumulation
    assert list((run_dir / "stages" / "lowlevel" / "tensorboard").glob("events.out.tfevents.*"))


def test_compile_auto_is_on_for_cuda_with_zero_up_to_2():
    import torch

    from eeg2im_scale.train.stages import unet_compile_backend

    def backend(device: str, *overrides: str):
        return unet_compile_backend(load_config(CONFIG, list(overrides)).train, torch.device(device))

    assert backend("cuda", "train.zero_stage=2") == "inductor" and backend("cuda", "train.zero_stage=0") == "inductor"
    assert backend("cuda", "train.zero_stage=3") is None and backend("cpu") is None
    assert backend("cpu", "train.compile=true", "train.compile_backend=aot_eager") == "aot_eager"
    assert backend("cuda", "train.compile=false") is None


def test_compiled_unet_trains_like_the_eager_one(corpus, tmp_path, caplog):
    """train.compile=true runs the diffusion UNet under torch.compile (aot_eager: inductor's graph
    capture and AOTAutograd without code generation, which a CPU test cannot afford): the losses
    are the eager run's, FLOPs are still counted, and the export has the eager UNet's keys."""
    import logging

    from safetensors.torch import load_file

    caplog.set_level(logging.INFO, logger="eeg2im_scale.train.stages")
    run_dir = tmp_path / "run"
    common = ["--config", CONFIG, f"run_dir={run_dir}", f"data.root={corpus}", *steps_override(4)]
    assert train_main(common) == 0
    export = run_dir / "stages" / "diffusion" / "final.safetensors"
    eager_stats, eager_keys = stats(run_dir, "diffusion"), set(load_file(str(export)))
    assert train_main([*common, "train.stage=diffusion", "train.compile=true",
                       "train.compile_backend=aot_eager"]) == 0
    assert "diffusion UNet: torch.compile(backend='aot_eager')" in caplog.text
    compiled_stats = stats(run_dir, "diffusion")
    assert set(load_file(str(export))) == eager_keys
    assert [r["step"] for r in compiled_stats] == [1, 2, 3, 4]
    for eager, compiled in zip(eager_stats, compiled_stats):
        assert compiled["loss/loss"] == pytest.approx(eager["loss/loss"], rel=1e-4), (eager, compiled)
        assert compiled["tflops_per_s"] > 0


def test_encoders_start_from_save_pretrained_weights_and_the_release_loads_without_them(corpus, tmp_path):
    """backbone_weights on 2 ranks under the deepspeed launcher: both EEG encoders start from a local
    braindecode save_pretrained directory (offline); the release rebuilds them from its config alone."""
    import shutil

    from braindecode.models import ShallowFBCSPNet

    weights = tmp_path / "pretrained"
    ShallowFBCSPNet(n_chans=16, n_outputs=5, n_times=128, sfreq=250.0, input_window_seconds=128 / 250).save_pretrained(
        weights)
    run_dir = tmp_path / "run"
    launch("deepspeed", run_dir, corpus, *steps_override(4), "train.log_every=2",
           f"model.highlevel.backbone_weights={weights}", f"model.lowlevel.backbone_weights={weights}")
    assert f"fine-tuned from pretrained weights `{weights}`" in (run_dir / "model" / "README.md").read_text()
    shutil.rmtree(weights)  # a release must not need the weights it started from
    trial = np.zeros((16, 128), np.float32)
    assert EEG2IMPipeline(run_dir / "model").generate(trial, num_images=1, steps=2, seed=0).shape == (1, 32, 32, 3)
