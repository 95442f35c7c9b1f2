"""The command line: ``eeg2im synth`` / ``eeg2im stream``, and streaming under torchrun with 2 ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import benchmark_module

from eeg2im_scale.cli.main import main

TINY = ["--num-samples", "96", "--num-classes", "3", "--num-subjects", "3", "--samples-per-shard", "12",
        "--image-size", "16", "--channels", "8", "--time-points", "64", "--sessions-per-subject", "3"]


def run(*args, env=None, check=True):
    result = subprocess.run([*args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "corpus"
    assert main(["synth", "--out", str(out), *TINY, "--seed", "3"]) == 0
    return out


def test_synth_writes_shards_and_manifest(synth_corpus, capsys):
    assert len(list((synth_corpus / "shards").glob("*.tar"))) == 8
    assert pq.read_metadata(synth_corpus / "manifest.parquet").num_rows == 96
    assert main(["synth", "--out", str(synth_corpus), *TINY]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


def test_synth_dry_run_prints_the_resolved_config(capsys, tmp_path):
    assert main(["synth", "--out", str(tmp_path / "x"), "--num-samples", "7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 7" in out and "channels: 128" in out
    assert not (tmp_path / "x").exists()


def test_stream_dry_run_and_config_errors(capsys):
    assert main(["stream", "--config", "configs/synthetic_tiny.yaml", "data.batch_size=5", "--dry-run"]) == 0
    assert "batch_size: 5" in capsys.readouterr().out
    assert main(["stream", "--config", "configs/synthetic_tiny.yaml", "data.batchsize=5"]) == 2
    assert "unknown key 'data.batchsize'" in capsys.readouterr().err


def test_stream_two_ranks_under_torchrun_read_each_test_sample_once(synth_corpus):
    torchrun = Path(sys.executable).parent / "torchrun"
    result = run(str(torchrun), "--standalone", "--nproc_per_node", "2", "launchers/stream.py",
                 "--split", "test", f"data.root={synth_corpus}", "data.synthesize=false", "data.image_size=16",
                 "data.batch_size=4", env={"OMP_NUM_THREADS": "1"})
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    rows = pq.read_table(synth_corpus / "manifest.parquet", columns=["split_image"]).to_pylist()
    assert sum(r["samples"] for r in reports) == sum(r["split_image"] == "test" for r in rows)


def test_preview_draws_one_stimulus_per_class(synth_corpus, tmp_path):
    out = tmp_path / "preview.png"
    assert main(["preview", "--root", str(synth_corpus), "--out", str(out), "--classes", "3"]) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size[0] > image.size[1] > 100


def test_readme_benchmark_tables_are_rendered_from_the_json_results():
    """The README's figures come from benchmarks/results/*.json, never typed by hand."""
    result = run(sys.executable, "benchmarks/render_readme.py", "--check", check=False)
    assert result.returncode == 0, "README.md is stale: run python benchmarks/render_readme.py"


def test_report_command_is_wired_and_explains_a_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "no_such_run")]) == 2
    assert "no_such_run" in capsys.readouterr().err


def test_readme_gpu_section_shows_each_configuration_once_and_failures_with_a_reason():
    render_readme = benchmark_module("render_readme")
    data = json.loads((render_readme.RESULTS / "gpu_diffusion.json").read_text())
    lines = render_readme.gpu_section(data)
    configurations = {render_readme._gpu_config(r) for r in data["results"]}
    table_rows = [line for line in lines if line.startswith("| ") and not line.startswith("| configuration")]
    assert len(table_rows) == len(configurations)  # repeated runs of one configuration collapse into one row
    failed = [c for c, entry in render_readme._gpu_configurations(data["results"]).items() if not entry["ok"]]
    assert sum("| – | – | – | – |" in row for row in table_rows) == len(failed)
    text = "\n".join(lines)
    assert data["environment"]["gpu"] in text and "bf16" in text


def test_readme_ablation_section_only_when_its_file_exists_and_flags_quick_mode(tmp_path):
    render_readme = benchmark_module("render_readme")
    assert "ablation" not in render_readme.render(tmp_path)  # absent: no placeholder
    stats = {"mean": 0.5, "std": None, "n": 1, "per_seed": {"seed0": 0.5}}
    metrics = ["eeg_top1", "generated_n_way_top_k", "colour_hist_distance", "hue_emd", "hue_error",
               "saturation_error", "brightness_error"]
    verdict = "multilevel beats highlevel_only on colour fidelity: inconclusive (one seed)"
    data = {"benchmark": "ablation", "mode": "quick", "complete": True, "environment": {"date": "2026-01-01T00:00"},
            "settings": {"seeds": [0], "eval_test_trials": 6}, "runs": {"paper": {"seed0": {}}, "ours": {"seed0": {}}},
            "summary": {method: {"metrics": {v: {m: stats for m in metrics} for v in ("multilevel", "highlevel_only")},
                                 "verdict": verdict, "teacher_test_accuracy": stats, "teacher_chance": 1 / 3}
                        for method in ("paper", "ours")}}
    (tmp_path / "ablation.json").write_text(json.dumps(data))
    text = render_readme.render(tmp_path)
    assert "Smoke-test numbers" in text and "| `paper` | `highlevel_only` | 0.500 |" in text
    assert f"Verdict (`paper`): {verdict}" in text and f"Verdict (`ours`): {verdict}" in text
    data["mode"] = "full"
    (tmp_path / "ablation.json").write_text(json.dumps(data))
    assert "Smoke-test" not in render_readme.render(tmp_path)


def test_readme_layout_and_architecture_name_every_package():
    """The map matches the tree: each package of eeg2im_scale/ has its line in the README's Layout
    and its place in docs/architecture.md."""
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    architecture = (repo / "docs" / "architecture.md").read_text()
    packages = sorted(p.name for p in (repo / "eeg2im_scale").iterdir() if (p / "__init__.py").is_file())
    assert {"data", "models", "train", "eval", "protocols", "bench", "cli"} <= set(packages)
    for name in packages:
        assert f"eeg2im_scale/{name}/" in layout, f"README Layout lacks eeg2im_scale/{name}/"
        assert f"{name}/" in architecture, f"docs/architecture.md lacks {name}/"
