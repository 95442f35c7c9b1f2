"""What a newcomer meets first: each mistake is one line on stderr, naming the file and the fix, exit 2."""

import os
import shutil
import subprocess
import sys

import numpy as np
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
