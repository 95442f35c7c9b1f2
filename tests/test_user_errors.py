"""What a newcomer meets first: each mistake is one line on stderr, naming the file and the fix, exit 2."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from eeg2im_scale.config import ConfigError, load_config


def eeg2im(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "eeg2im_scale.cli.main", *map(str, args)], capture_output=True,
                            text=True, timeout=300, cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return result.returncode, result.stderr.strip().splitlines()


def one_error(args, cwd=None) -> str:
    code, lines = eeg2im(*args, cwd=cwd)
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  root: x\n  batch_size: [1, 2\n")
    line = one_error(["stream", "--config", bad, "--dry-run"])
    assert line.startswith(f"eeg2im stream: error: {bad}:4:1:") and "invalid YAML" in line
    with pytest.raises(ConfigError, match=r"override 'data.classes=\[a, b': the value is not valid YAML: 1:"):
        load_config(None, ["data.classes=[a, b"])


def test_empty_data_root_says_how_to_create_a_corpus(tmp_path):
    line = one_error(["stream", "data.root=''"], cwd=tmp_path)
    assert "data.root is empty" in line and "eeg2im synth --out" in line
    assert not list(tmp_path.iterdir())  # nothing synthesized into the working directory
    line = one_error(["stream", f"data.root={tmp_path / 'none'}", "data.synthesize=false"])
    assert "no corpus at" in line and "eeg2im synth --out" in line


def test_truncated_manifest_and_missing_shard_name_the_file_and_the_fix(random_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(random_corpus, root)
    (root / "shards" / "shard-000003.tar").unlink()
    line = one_error(["stream", f"data.root={root}", "data.synthesize=false", "--split", "test"])
    assert f"{root}/shards/shard-000003.tar: shard listed in {root}/manifest.parquet is missing" in line
    assert "--overwrite" in line and "sample ?" not in line
    manifest = root / "manifest.parquet"
    manifest.write_bytes(manifest.read_bytes()[:-100])
    line = one_error(["stream", f"data.root={root}", "data.synthesize=false"])
    assert f"{manifest}: not a readable Parquet file" in line and "--overwrite" in line and "magic" not in line


def test_convert_nan_leaves_nothing_behind_and_says_nan_and_where(tmp_path):
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((8, 4, 32)).astype(np.float32)
    eeg[5, 2, 7] = np.nan
    np.save(tmp_path / "x.npy", eeg)
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "pics" / "a.png")
    (tmp_path / "t.csv").write_text("image,label,subject\n" + "".join(f"a.png,{i % 2},{i // 4}\n" for i in range(8)))
    out = tmp_path / "out"
    line = one_error(["convert", "arrays", "--eeg", tmp_path / "x.npy", "--table", tmp_path / "t.csv", "--images",
                      tmp_path / "pics", "--out", out, "--sfreq", "100", "--samples-per-shard", "3"])
    assert "sample 5" in line and "1 NaN/Inf values, first at (channel, time) = (2, 7)" in line, line
    assert "max |x|" not in line and not out.exists()


def test_encode_eeg_tells_overflow_from_nan():
    from eeg2im_scale.data.format import encode_eeg

    big = np.zeros((3, 5), np.float32)
    big[1, 4] = 1e6
    with pytest.raises(ValueError, match=r"1 values beyond the float16 range .* first at \(channel, time\) = \(1, 4\)"):
        encode_eeg(big)


# --- a release and `eeg2im generate` ---------------------------------------------------------------

@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A real release assembled by export_release from freshly initialised stage weights (untrained:
    these tests are about inputs and files, not image quality)."""
    from safetensors.torch import save_file

    from eeg2im_scale.config import load_config
    from eeg2im_scale.data.corpus import write_synthetic
    from eeg2im_scale.train.release import export_release
    from eeg2im_scale.models.teacher import Teacher
    from eeg2im_scale.train.stages import Geometry, build_highlevel, build_lowlevel, build_unet, stage_weights

    tmp = tmp_path_factory.mktemp("release")
    cfg = load_config("tests/configs/tiny_train.yaml", [f"run_dir={tmp / 'run'}", f"data.root={tmp / 'corpus'}",
                                                         "model.teacher.arch=resnet18", "synth.num_samples=48"])
    write_synthetic(cfg.synth, cfg.data.root)
    from eeg2im_scale.data.manifest import Manifest

    geo = Geometry(cfg.data, Manifest.for_data(cfg.data).info)
    modules = {"highlevel": ("encoder.", build_highlevel(cfg.model, geo)), "lowlevel": ("encoder.", build_lowlevel(cfg.model, geo)[1]),
               "diffusion": ("ema.unet.", build_unet(cfg.model, geo)),
               "teacher": ("teacher.", Teacher(cfg.model.teacher, geo.num_classes))}
    for stage, (prefix, module) in modules.items():
        stage_weights(cfg, stage).parent.mkdir(parents=True)
        save_file({prefix + k: v.contiguous() for k, v in module.state_dict().items()}, str(stage_weights(cfg, stage)))
    old = os.umask(0o022)
    try:
        model = export_release(cfg, tmp / "model")
    finally:
        os.umask(old)
    return cfg, model


def test_release_files_are_shareable_and_the_card_states_the_run(release):
    cfg, model = release
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in model.iterdir()} == {
        p.name: "0o644" for p in model.iterdir()} and oct(model.stat().st_mode & 0o777) == "0o755"
    card = (model / "README.md").read_text()
    assert "ResNet50" not in card and "`resnet18` teacher" in card and "`ShallowFBCSPNet`" in card
    assert "[16, 128] (channels × time" in card and "eeg2im export-trial" in card


def generate_args(model, eeg, out, *extra):
    return ["generate", "--model", model, "--eeg", eeg, "--out", out, "--num-images", "1", "--steps", "1",
            "--device", "cpu", *extra]


def test_export_trial_then_generate_and_refuse_a_non_empty_out(release, tmp_path):
    cfg, model = release
    code, _ = eeg2im("export-trial", "--root", cfg.data.root, "--index", "7", "--out", tmp_path / "trial")
    assert code == 0
    trial = np.load(tmp_path / "trial" / "000000007.eeg.npy")
    from eeg2im_scale.data.format import read_shard, load_npy

    stored = next(r for s in sorted((Path(cfg.data.root) / "shards").glob("*.tar")) for r in read_shard(s)
                  if r["__key__"] == "000000007")
    assert trial.dtype == np.float32 and np.array_equal(trial, load_npy(stored["eeg.npy"]).astype(np.float32))
    assert (tmp_path / "trial" / "000000007.png").read_bytes() == stored["png"]
    out = tmp_path / "gen"
    out.mkdir()
    (out / "trial0003_image00.png").write_bytes(b"stale")
    line = one_error(generate_args(model, tmp_path / "trial" / "000000007.eeg.npy", out))
    assert f"{out} is not empty" in line and "--overwrite" in line
    code, _ = eeg2im(*generate_args(model, tmp_path / "trial" / "000000007.eeg.npy", out, "--overwrite"))
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["trial0000_image00.png"]


def _save(path, kind):
    if kind == "nan":
        eeg = np.zeros((16, 128), np.float32)
        eeg[3, 9] = np.nan
        np.save(path, eeg)
    elif kind == "1d":
        np.save(path, np.zeros(128, np.float32))
    elif kind == "npz-key":
        np.savez(path, data=np.zeros((16, 128), np.float32))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("1,2,3\n4,5,6\n")


@pytest.mark.parametrize("kind, name, fragment", [
    ("nan", "t.npy", "1 NaN/Inf values, first in trial 0 at (channel, time) = (3, 9)"),
    ("1d", "t.npy", "shape (128,), this model expects [16, 128]"),
    ("npz-key", "t.npz", "a .npz needs the key 'eeg'"),
    ("empty", "t.npy", "not a NumPy .npy/.npz file (empty)"),
    ("text", "t.npy", "not a NumPy .npy/.npz file (starts with b'1,2,3\\n'"),
])
def test_generate_checks_the_trial_before_loading_the_model(release, tmp_path, kind, name, fragment):
    _, model = release
    _save(tmp_path / name, kind)
    line = one_error(generate_args(model, tmp_path / name, tmp_path / "gen"))
    assert line.startswith(f"eeg2im generate: error: {tmp_path / name}: ") and fragment in line, line
    assert "unsafely" not in line and not (tmp_path / "gen").exists()


def test_generate_reads_npz_and_refuses_cuda_without_a_gpu(release, tmp_path):
    from eeg2im_scale.models.pipeline import load_trials

    np.savez(tmp_path / "t.npz", eeg=np.ones((2, 16, 128), np.float16))
    assert load_trials(tmp_path / "t.npz", 16, 128).shape == (2, 16, 128)
    if not torch.cuda.is_available():
        _, model = release
        line = one_error(generate_args(model, tmp_path / "t.npz", tmp_path / "gen")[:-2] + ["--device", "cuda"])
        assert "no CUDA GPU is visible" in line and "--device cpu" in line


def test_stream_counts_the_samples_a_truncated_shard_loses(random_corpus, tmp_path):
    import json

    from eeg2im_scale.data.manifest import Manifest

    root = tmp_path / "corpus"
    shutil.copytree(random_corpus, root)
    shard = Path(max(Manifest(root).shards("image", "test"), key=lambda e: e.in_split).path)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 10])
    result = subprocess.run([sys.executable, "-m", "eeg2im_scale.cli.main", "stream", "--split", "test",
                             f"data.root={root}", "data.synthesize=false", "data.on_error=skip", "data.image_size=16"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = Manifest(root).count("image", "test") - report["samples"]
    assert expected > 1 and report["dropped"] == expected


def test_convert_warns_when_a_split_is_empty(tmp_path, caplog):
    from eeg2im_scale.data.writer import empty_splits

    assert empty_splits({"split_image": ["train", "val", "test"], "split_subject": ["train", "train", "val"]}) == [
        "split scheme 'subject' has no test samples"]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((6, 4, 32)).astype(np.float32))
    (tmp_path / "pics").mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8), (80 * k, 10, 10)).save(tmp_path / "pics" / f"{k}.png")
    (tmp_path / "t.csv").write_text("image,label,subject\n" + "".join(f"{i % 3}.png,{i % 3},{i // 3}\n" for i in range(6)))
    from eeg2im_scale.cli.main import main

    with caplog.at_level("WARNING"):
        assert main(["convert", "arrays", "--eeg", str(tmp_path / "x.npy"), "--table", str(tmp_path / "t.csv"),
                     "--images", str(tmp_path / "pics"), "--out", str(tmp_path / "out"), "--sfreq", "100"]) == 0
    warned = [r.getMessage() for r in caplog.records if "has no" in r.getMessage()]
    assert any("split scheme 'image' has no" in w and str(tmp_path / "out" / "manifest.parquet") in w for w in warned)


def test_generate_reads_a_trial_at_a_url_and_names_the_url_in_its_errors(release, tmp_path):
    import functools
    import http.server
    import threading

    _, model = release
    _save(tmp_path / "t.npy", "nan")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
        directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/t.npy"
        line = one_error(generate_args(model, url, tmp_path / "gen"))
        assert line.startswith(f"eeg2im generate: error: {url}: ") and "NaN/Inf" in line, line
        line = one_error(generate_args(model, url.replace("t.npy", "missing.npy"), tmp_path / "gen"))
        assert "missing.npy: not found" in line, line
    finally:
        server.shutdown()
        server.server_close()


def test_a_release_exported_as_a_diffusers_pipeline_generates_the_same_images(release, tmp_path):
    """`eeg2im export-diffusers`: diffusers' own layout (model_index.json, a folder per component saved by
    save_pretrained, a Hub model card whose model-index holds the test metrics), loaded back by the
    generic DiffusionPipeline.from_pretrained; with the same generator it gives exactly the images of
    `eeg2im generate`'s pipeline."""
    import json
    import shutil

    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard

    from eeg2im_scale.cli.main import main as cli_main
    from eeg2im_scale.models.diffusers_pipeline import EEG2IMDiffusionPipeline
    from eeg2im_scale.models.pipeline import EEG2IMPipeline

    model = shutil.copytree(release[1], tmp_path / "run" / "model")
    (tmp_path / "run" / "eval").mkdir()
    metrics = {"metrics": {"eeg_top1": {"name": "EEG top-1 accuracy", "value": 0.5, "chance": 0.34},
                           "fid": {"name": "FID", "value": None}},
               "protocol": {"split": "test", "partial": False}}
    (tmp_path / "run" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "diffusers"
    assert cli_main(["export-diffusers", "--model", str(model), "--out", str(out)]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "EEG2IMDiffusionPipeline"] and {"conditioner", "unet", "scheduler"} <= set(index)
    assert (out / "unet" / "config.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and "eeg" in card.data.tags
    (result,) = card.data.eval_results  # scalar metrics only: FID was not computed
    assert (result.metric_type, result.metric_value, result.dataset_split) == ("eeg_top1", 0.5, "test")
    assert "DiffusionPipeline.from_pretrained" in card.text
    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert isinstance(pipe, EEG2IMDiffusionPipeline)
    trial = np.random.default_rng(0).normal(0, 10, (16, 128)).astype(np.float32)
    expected = EEG2IMPipeline(model).generate(trial, num_images=2, guidance_scale=3.0, steps=3, seed=7)
    got = pipe(trial, num_images_per_trial=2, num_inference_steps=3, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(7), output_type="np").images
    assert np.array_equal(got, expected)
    assert len(pipe(trial, num_inference_steps=2, generator=torch.Generator().manual_seed(7)).images) == 1  # PIL
    assert np.array_equal(EEG2IMDiffusionPipeline.from_pretrained(out)(
        trial, num_images_per_trial=2, num_inference_steps=3, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(7), output_type="np").images, expected)
    with (out / "pipeline.py").open("a") as loader:
        loader.write("print('code the export did not write')\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # other code is never run unasked
        EEG2IMDiffusionPipeline.from_pretrained(out)
    assert cli_main(["export-diffusers", "--model", str(model), "--out", str(out)]) == 2  # never over an export
