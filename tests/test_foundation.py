"""EEG foundation models (LaBraM, CBraMod, EEGPT, BIOT) as encoders: their input adaptation (rate,
window, channel names, scale), offline weights, and the frozen / LoRA fine-tuning modes under
DeepSpeed ZeRO-2 with resume. Tiny architectures via backbone_kwargs keep every build fast."""

import dataclasses
import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.signal import resample_poly

from eeg2im_scale.config import HighLevelConfig, LoRAConfig, load_config
from eeg2im_scale.data.synth_eeg import synth_channel_names
from eeg2im_scale.models.build import Geometry, build_highlevel, build_lowlevel, encoder_inputs
from eeg2im_scale.models.eeg_encoders import HighLevelEncoder
from eeg2im_scale.models.finetune import merge_lora
from eeg2im_scale.models.foundation import plan_input

CONFIG = "tests/configs/tiny_train.yaml"  # 16 BioSemi channels x 128 samples at 250 Hz
NEAREST = "nearest:biosemi128"
TINY = {
    "Labram": {"patch_size": 25, "num_layers": 1, "num_heads": 2, "conv_out_channels": 4},
    "CBraMod": {"n_layer": 1, "nhead": 2, "dim_feedforward": 32, "emb_dim": 8},  # its spectral branch fixes 200
    "EEGPT": {"patch_size": 16, "patch_stride": 16, "depth": 1, "embed_dim": 32, "num_heads": 2, "embed_num": 1},
    "BIOT": {"embed_dim": 16, "num_heads": 2, "num_layers": 1, "hop_length": 25},
}
RATE = {"Labram": 200.0, "CBraMod": 200.0, "EEGPT": 256.0, "BIOT": 200.0}
WINDOW = {"Labram": 25, "CBraMod": 200, "EEGPT": 16, "BIOT": 25}


@pytest.fixture(autouse=True)
def _quiet(single_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # braindecode's "trained at 200 Hz", stft and montage notices
        yield


def _model_cfg(backbone: str, **encoder):
    cfg = load_config(CONFIG)
    channel_map = NEAREST if backbone == "Labram" else None
    high = dataclasses.replace(cfg.model.highlevel, backbone=backbone, backbone_kwargs=TINY[backbone], embed_dim=16,
                               backbone_channel_map=channel_map, **encoder)
    low = dataclasses.replace(cfg.model.lowlevel, backbone=backbone, backbone_kwargs=TINY[backbone],
                              backbone_channel_map=channel_map, **encoder)
    return cfg, dataclasses.replace(cfg.model, highlevel=high, lowlevel=low)


@pytest.mark.parametrize("backbone", list(TINY))
def test_each_foundation_model_builds_on_the_synthetic_corpus_through_the_adapter(backbone):
    cfg, model_cfg = _model_cfg(backbone)
    geo = Geometry.of_synth(cfg.synth, cfg.data)
    assert geo.channel_names == synth_channel_names(16)  # the BioSemi names the synthetic manifest records
    high, low = build_highlevel(model_cfg, geo), build_lowlevel(model_cfg, geo)[1]
    plan = high.adapter.plan
    assert plan.sfreq == RATE[backbone] and plan.n_times % WINDOW[backbone] == 0
    assert high.backbone.n_times == plan.n_times and high.backbone.n_chans == 16
    eeg = torch.randn(3, 16, 128)
    assert high(eeg)["embedding"].shape == (3, 16) and low(eeg).shape == (3, model_cfg.lowlevel.latent_dim)
    record = encoder_inputs(model_cfg, geo)["highlevel"]
    assert record["sfreq"] == {"from": 250.0, "to": RATE[backbone], "resampling": record["sfreq"]["resampling"]}
    assert record["n_times"]["from"] == 128 and record["n_times"]["to"] == plan.n_times
    assert record["scale"]["unit"] == "z-score (data.normalize)"
    if backbone == "Labram":  # names matched to its montage and passed per batch
        assert record["channels"]["passed_as"] == "forward" and record["channels"]["renamed"]["A1"] == "CZ"
        assert len(set(record["channels"]["used"])) == 16


def test_resampling_cropping_and_scaling_equal_scipys_polyphase_resampler():
    rng = np.random.default_rng(0)
    trial = rng.normal(0, 10, (2, 4, 250)).astype(np.float32)
    names = ["Fp1", "Cz", "Pz", "Oz"]
    plan = plan_input("Labram", {}, None, names, 250.0, 250, False, "model.highlevel")  # 250 -> 200 samples, 1 patch
    from eeg2im_scale.models.foundation import InputAdapter

    got = InputAdapter(plan)(torch.from_numpy(trial)).numpy()
    expected = resample_poly(trial.astype(np.float64), 4, 5, axis=-1)[..., :200] * 0.01  # uV -> 0.1 mV
    assert got.shape == (2, 4, 200) and np.allclose(got, expected, atol=1e-5)
    up = plan_input("CBraMod", {}, None, names, 100.0, 250, False, "model.lowlevel")  # 500 samples at 200 Hz -> 400
    got = InputAdapter(up)(torch.from_numpy(trial)).numpy()
    assert up.resampled_n_times == 500 and got.shape == (2, 4, 400)
    assert np.allclose(got, resample_poly(trial.astype(np.float64), 2, 1, axis=-1)[..., :400] * 0.01, atol=1e-5)
    assert up.record()["n_times"]["length"] == "cropped to 400"


def test_an_unmappable_montage_names_the_channels_and_the_fix():
    names = synth_channel_names(16)
    with pytest.raises(ValueError, match=r"model.highlevel.backbone=Labram .* does not know 14 of the corpus's 16 "
                                         r"channels: A4, A12.*backbone_channel_map.*nearest:biosemi128"):
        plan_input("Labram", {}, None, names, 250.0, 128, True, "model.highlevel")
    with pytest.raises(ValueError, match=r"A4 \(as NOWHERE\)"):
        plan_input("Labram", {}, {"a4": "nowhere", **{n: None for n in names[2:]}}, names, 250.0, 128, True, "k")
    with pytest.raises(ValueError, match="corpus does not have: XX"):
        plan_input("BIOT", {}, {"XX": "CZ"}, names, 250.0, 128, True, "k")
    dropped = plan_input("Labram", {}, {n: None for n in names if n not in ("A1", "C5")}, names, 250.0, 128, True, "k")
    assert dropped.channel_names == ["A1", "C5"] and dropped.channel_index == [0, 9]  # names at face value


@pytest.mark.parametrize("backbone", list(TINY))
def test_save_pretrained_weights_load_identically_offline(backbone, tmp_path):
    names = synth_channel_names(16)
    kwargs = dict(backbone_kwargs=TINY[backbone], embed_dim=16, backbone_channel_map=NEAREST if backbone == "Labram"
                  else None)
    source = HighLevelEncoder(HighLevelConfig(backbone=backbone, **kwargs), 16, 128, 250.0, 3, teacher_dim=8,
                              channel_names=names)
    source.backbone.save_pretrained(tmp_path / "weights")
    loaded = HighLevelEncoder(HighLevelConfig(backbone=backbone, backbone_weights=str(tmp_path / "weights"), **kwargs),
                              16, 128, 250.0, 3, teacher_dim=8, channel_names=names)
    theirs, ours = source.backbone.state_dict(), loaded.backbone.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_frozen_trains_only_the_output_layer_and_lora_merges_into_a_plain_backbone():
    names = synth_channel_names(16)
    base = dict(backbone="Labram", backbone_kwargs=TINY["Labram"], embed_dim=16, backbone_channel_map=NEAREST)
    frozen = HighLevelEncoder(HighLevelConfig(finetune="frozen", **base), 16, 128, 250.0, 3, teacher_dim=8,
                              channel_names=names)
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.final_layer.weight", "backbone.final_layer.bias", "classifier.weight",
                         "classifier.bias", "teacher_projection.weight", "teacher_projection.bias"}
    lora = LoRAConfig(r=2, alpha=4.0)
    adapted = HighLevelEncoder(HighLevelConfig(finetune="lora", lora=lora, **base), 16, 128, 250.0, 3, teacher_dim=8,
                               channel_names=names).eval()
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" in n} and all(
        "lora_" in n or n.startswith(("backbone.final_layer", "classifier", "teacher_projection")) for n in trainable)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()  # peft starts B at zero: make the adapters change the output
    eeg = torch.randn(2, 16, 128)
    plain = HighLevelEncoder(HighLevelConfig(finetune="lora", lora=lora, **base), 16, 128, 250.0, 3, teacher_dim=8,
                             pretrained=False, channel_names=names).eval()  # how every later build makes it
    plain.load_state_dict(merge_lora(adapted.state_dict(), lora), strict=True)
    with torch.no_grad():
        assert torch.allclose(plain(eeg)["embedding"], adapted(eeg)["embedding"], atol=1e-5)


def test_a_release_records_what_each_encoder_saw(tmp_path):
    from eeg2im_scale.data.corpus import write_synthetic
    from eeg2im_scale.train.release import export_release
    from eeg2im_scale.train.stages import stage_weights

    cfg, model_cfg = _model_cfg("Labram")
    cfg = dataclasses.replace(cfg, model=model_cfg, run_dir=str(tmp_path / "run"),
                              synth=dataclasses.replace(cfg.synth, num_samples=48, samples_per_shard=16),
                              data=dataclasses.replace(cfg.data, root=str(tmp_path / "corpus")))
    write_synthetic(cfg.synth, tmp_path / "corpus")
    for stage, prefix in (("teacher", "teacher"), ("lowlevel", "encoder"), ("highlevel", "encoder"),
                          ("diffusion", "ema.unet")):  # export_release only renames the stages' tensors
        stage_weights(cfg, stage).parent.mkdir(parents=True)
        save_file({f"{prefix}.w": torch.zeros(1)}, str(stage_weights(cfg, stage)))
    corpus = json.loads((export_release(cfg, tmp_path / "model") / "corpus.json").read_text())
    seen = corpus["encoder_input"]["highlevel"]
    assert seen["sfreq"]["from"] == 250.0 and seen["sfreq"]["to"] == 200.0
    assert seen["channels"]["renamed"]["A1"] == "CZ" and seen["n_times"]["to"] == 100
    assert corpus["encoder_input"]["lowlevel"]["backbone"] == "Labram"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from eeg2im_scale.data.corpus import write_synthetic

    root = tmp_path_factory.mktemp("foundation") / "corpus"
    write_synthetic(load_config(CONFIG).synth, root)
    return root


# every fine-tuning mode under ZeRO-2 and ZeRO-3 (parameters partitioned across ranks, gathered for the
# export), each of the four models in at least two
TWO_RANK_RUNS = [("Labram", "lora", 2), ("BIOT", "frozen", 2), ("CBraMod", "full", 2), ("EEGPT", "lora", 3),
                 ("CBraMod", "frozen", 3), ("BIOT", "full", 3)]


def test_every_foundation_model_trains_from_local_weights_on_two_ranks_halts_resumes_and_exports(corpus, tmp_path):
    """The high-level stage of each tiny foundation model, started from a local ``save_pretrained``
    directory, on 2 ranks in one DeepSpeed launch (tests/train_runs.py): halted after 2 of 4 steps and
    resumed (LoRA adapters are rebuilt on resume: the risky case), then exported as a plain backbone
    (LoRA merged) that every later build loads. The stage's teacher is an untrained export written here."""
    from test_train import BIN, _port, stats

    from eeg2im_scale.data.manifest import Manifest
    from eeg2im_scale.models.teacher import Teacher
    from eeg2im_scale.train.stages import stage_weights

    base = load_config(CONFIG)
    geo = Geometry(base.data, Manifest(corpus).info)
    teacher = tmp_path / "teacher.safetensors"
    save_file({f"teacher.{k}": v.contiguous() for k, v in
               Teacher(base.model.teacher, geo.num_classes).state_dict().items()}, str(teacher))
    runs, configs = [], {}
    for backbone, mode, zero in TWO_RANK_RUNS:
        name = f"{backbone}-{mode}"
        kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in TINY[backbone].items()) + "}"
        overrides = [f"run_dir={tmp_path / name / 'run'}", f"data.root={corpus}", "train.stage=highlevel",
                     "train.highlevel.steps=4", "train.checkpoint_every=2", "train.log_every=1",
                     f"train.zero_stage={zero}", f"model.highlevel.backbone={backbone}",
                     f"model.highlevel.backbone_kwargs={kwargs}",
                     f"model.highlevel.backbone_channel_map={NEAREST if backbone == 'Labram' else 'null'}",
                     f"model.highlevel.finetune={mode}", "model.highlevel.lora.r=2"]
        weights = tmp_path / name / "weights"
        build_highlevel(load_config(CONFIG, overrides).model, geo).backbone.save_pretrained(weights)
        overrides.append(f"model.highlevel.backbone_weights={weights}")
        configs[name] = cfg = load_config(CONFIG, overrides)
        stage_weights(cfg, "teacher").parent.mkdir(parents=True)
        os.link(teacher, stage_weights(cfg, "teacher"))
        for extra in ("train.halt_after=2", "--resume"):
            runs.append({"port": _port(), "argv": ["--config", CONFIG, *overrides, extra]})
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    command = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(_port()), "tests/train_runs.py",
               str(tmp_path / "runs.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    resumed = (result.stdout + result.stderr).count("stage highlevel resumed at step 2")
    assert resumed == len(TWO_RANK_RUNS) * 2, resumed  # each run, each rank
    for backbone, mode, zero in TWO_RANK_RUNS:
        name = f"{backbone}-{mode}"
        cfg = configs[name]
        assert [r["step"] for r in stats(Path(cfg.run_dir), "highlevel")] == [1, 2, 3, 4], name
        export = load_file(str(stage_weights(cfg, "highlevel")))
        assert not [k for k in export if "lora_" in k or "base_layer" in k], name
        saved = {f"encoder.backbone.{k}": v for k, v in load_file(str(tmp_path / name / "weights" /
                                                                      "model.safetensors")).items()}
        assert saved.keys() <= export.keys(), name
        changed = {k for k, v in saved.items() if not torch.equal(export[k], v)}
        head = {k for k in saved if k.startswith("encoder.backbone.final_layer.")}
        if mode == "frozen":  # the loaded weights went through the engine untouched, the output layer trained
            assert changed == head, (name, changed)
        elif mode == "lora":  # adapters merged into linear weights; LoRA never changes a bias
            assert head < changed and all(k.endswith(".weight") for k in changed - head), (name, changed)
        else:  # full: the trunk trained too, biases included
            assert head < changed and any(k.endswith(".bias") for k in changed - head), (name, changed)
        plain = build_highlevel(cfg.model, geo)  # as the diffusion stage builds it: no weights, no peft
        plain.load_state_dict({k[len("encoder."):]: v for k, v in export.items() if k.startswith("encoder.")})


@pytest.mark.parametrize("backbone, mode", [("ShallowFBCSPNet", "frozen"), ("EEGConformer", "lora")])
def test_a_frozen_trunk_keeps_its_batch_norm_statistics_in_training_mode(backbone, mode):
    """Classic backbones normalise with BatchNorm: in a frozen or LoRA-adapted trunk, training mode
    must neither update its running statistics nor normalise by the batch's."""
    cfg = HighLevelConfig(backbone=backbone, embed_dim=16, finetune=mode, lora=LoRAConfig(r=2))
    encoder = HighLevelEncoder(cfg, 16, 128, 250.0, 3, teacher_dim=8)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # train and eval mode may then differ by the normalisation only
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items() if "running_" in k}
    assert before
    eeg = torch.randn(8, 16, 128) * 3 + 1
    with torch.no_grad():
        trained = encoder.train()(eeg)["embedding"]
        evaluated = encoder.eval()(eeg)["embedding"]
    after = {k: v for k, v in encoder.backbone.state_dict().items() if "running_" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    if backbone == "ShallowFBCSPNet":  # without dropout, normalisation is all that differs between the modes
        assert torch.allclose(trained, evaluated, atol=1e-6)
