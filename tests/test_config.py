from pathlib import Path

import pytest

from eeg2im_scale.config import Config, ConfigError, apply_overrides, dump_config, load_config


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 4\n  eeg_window: [20, 460]\nsynth:\n  sfreq: 500\n")
    cfg = load_config(path, ["data.batch_size=16", "data.on_error=skip", "run_dir=runs/x"])
    assert cfg.data.batch_size == 16 and cfg.data.on_error == "skip" and cfg.run_dir == "runs/x"
    assert cfg.data.eeg_window == (20, 460)
    assert cfg.synth.sfreq == 500.0 and isinstance(cfg.synth.sfreq, float)


# Real corpora's geometry (channels, time points, Hz, classes) as their converters write it;
# synthetic configs take theirs from `synth:`.
REAL_GEOMETRY = {"eeg_imagenet40.yaml": (128, 440, 1000.0, 40), "eeg_imagenet_subset4.yaml": (128, 440, 1000.0, 40),
                 "things_eeg2.yaml": (17, 100, 100.0, 1854), "eeg_imagenet_2024.yaml": (62, 400, 1000.0, 80)}


@pytest.mark.parametrize("path", sorted(Path("configs").rglob("*.yaml")))
def test_shipped_configs_load_and_build_their_models(path):
    """Every shipped config is valid and its models can be built at its data geometry."""
    from eeg2im_scale.models.build import Geometry, build_highlevel, build_lowlevel, build_unet

    cfg = load_config(path)
    channels, time_points, sfreq, classes = REAL_GEOMETRY.get(
        path.name, (cfg.synth.channels, cfg.synth.time_points, cfg.synth.sfreq, cfg.synth.num_classes))
    assert cfg.data.synthesize == (path.name not in REAL_GEOMETRY)
    class_names = cfg.data.classes or [str(c) for c in range(classes)]
    info = {"channel_names": [f"E{i}" for i in range(channels)], "time_points": time_points,
            "sfreq": sfreq, "class_names": class_names}
    geo = Geometry(cfg.data, info)
    build_highlevel(cfg.model, geo), build_lowlevel(cfg.model, geo), build_unet(cfg.model, geo)


def test_defaults_are_a_valid_config():
    assert load_config(None, []) == Config()


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.bath_size=3"])
    message = str(err.value)
    assert "data.bath_size" in message and "batch_size" in message and "num_workers" in message
    with pytest.raises(ConfigError, match="unknown key 'dta'.*data"):
        load_config(None, ["dta.batch_size=3"])


@pytest.mark.parametrize("override, fragment", [
    ("data.batch_size=abc", "data.batch_size: expected int, got str"),
    ("data.batch_size=2.5", "data.batch_size: expected int, got float"),
    ("data.batch_size=true", "data.batch_size: expected int, got bool"),
    ("data.on_error=ignore", "data.on_error: 'ignore' is not one of 'raise', 'skip'"),
    ("data.eeg_window=[1, 2, 3]", "data.eeg_window: expected 2 items"),
    ("data.eeg_window=[10, 5]", "data.eeg_window must be [start, stop)"),
    ("synth.split_fractions=[0.5, 0.1, 0.1]", "synth.split_fractions"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("data=3", "data: expected a mapping"),
    ("model.highlevel.lora.r=0", "model.highlevel.lora.r must be >= 1"),
    ("model.lowlevel.lora.dropout=1.0", "model.lowlevel.lora.alpha must be > 0 and model.lowlevel.lora.dropout in"),
    ("model.lowlevel.lora.target_modules=[]", "model.lowlevel.lora.target_modules must name modules"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["data.batch_size"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["data.bandpass=[0.5, 40]", "data.batch_size=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_base_config_is_patched_section_by_section(tmp_path):
    (tmp_path / "parent.yaml").write_text("run_dir: runs/p\ndata: {batch_size: 3, image_size: 16}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\ndata: {batch_size: 5}\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["data.num_workers=1"])
    assert (cfg.run_dir, cfg.data.batch_size, cfg.data.image_size, cfg.data.num_workers) == ("runs/p", 5, 16, 1)


def test_base_config_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(the base of .*a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="'base' chain loops"):
        load_config(tmp_path / "b.yaml")
