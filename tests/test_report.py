"""The HTML run report, built from a real tiny run (trained on 1 rank in-process, then evaluated)."""

import base64
import json
import re
import shutil

import pytest

from conftest import one_thread
from eeg2im_scale.cli.main import main as cli_main
from eeg2im_scale.config import STAGES
from eeg2im_scale.eval.report import main as report_main
from eeg2im_scale.eval.report import write_report

CONFIG = "tests/configs/tiny_train.yaml"
EVAL = ["eval.random_inception=true", "eval.max_trials=8", "eval.images_per_trial=2", "eval.batch_size=4",
        "eval.sample_steps=2", "eval.kid_subsets=5", "eval.is_splits=2", "eval.grid_trials=2"]
SECTIONS = ["summary", "samples", "metrics", "per-subject", "training", "validation", "config"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_release):
    """A run directory as `make quickstart` + `eeg2im evaluate` leave it (the evaluation in RUN_DIR/eval):
    a copy of the session's tiny run (its resumable checkpoints left out), evaluated."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_release / "run", run, ignore=shutil.ignore_patterns("checkpoints"))
    with one_thread():
        assert cli_main(["evaluate", "--config", CONFIG, "--checkpoint", str(run / "model"), "--out", str(run / "eval"),
                         f"data.root={tiny_release / 'corpus'}", *EVAL]) == 0
    return run


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_is_self_contained_with_every_section_in_order(run):
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    positions = [html.index(f'<section id="{s}">') for s in SECTIONS]
    assert positions == sorted(positions)
    pngs = embedded_pngs(html)
    assert len(pngs) == 1 + len(STAGES)  # the sample grid + one training figure per stage
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    assert html.count('src="') == len(pngs)  # every src is an embedded PNG, none points at a file
    for external in ("http://", "https://", "<script", "<link", "url("):
        assert external not in html


def test_report_states_the_measured_numbers(run):
    html = write_report(run, run / "copy.html").read_text()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["metrics"]
    for name in ("eeg_top1", "generated_n_way_top_k", "hue_error", "hist_intersection", "fid"):
        assert f">{metrics[name]['value']:.4g}<" in html, name
    for name in ("inception_score", "kid"):
        assert f">{metrics[name]['value']['mean']:.4g} ± " in html, name
    assert "randomly initialised" in html  # random-Inception numbers are flagged as not comparable
    assert "<th>chance</th>" in html and f">{metrics['hue_error']['chance']:.4g}<" in html  # every number with its chance
    first_subject = (run / "eval" / "per_subject.csv").read_text().splitlines()[1].split(",")
    assert "".join(f'<td class="num">{v}</td>' for v in first_subject) in html
    validation = json.loads((run / "stages" / "teacher" / "validation.json").read_text())
    assert f"ce = {validation['ce']:.4g}" in html
    assert "<details>" in html and "<pre>run_dir: " in html


def test_missing_evaluation_is_stated_not_fatal(run, tmp_path):
    out = tmp_path / "report.html"
    assert report_main([str(run), "--eval-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    html = out.read_text()
    assert "No evaluation yet" in html and "No sample grid" in html and "No per-subject results" in html
    assert len(embedded_pngs(html)) == len(STAGES)  # the training curves are still there


def test_partial_run_with_html_in_its_config_is_escaped(run, tmp_path):
    partial = tmp_path / "partial"
    (partial / "stages" / "teacher").mkdir(parents=True)
    shutil.copy(run / "stages" / "teacher" / "stats.jsonl", partial / "stages" / "teacher")
    (partial / "config.yaml").write_text("run_dir: \"runs/<script>alert('x')</script> & <b>co</b>\"\n")
    html = write_report(partial).read_text()
    assert "<script>" not in html and "<b>co</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in html
    assert "Stage diffusion not trained" in html and "not validated" in html
    assert len(embedded_pngs(html)) == 1  # the teacher's curves


def test_evaluation_written_next_to_the_release_is_found(run, tmp_path):
    shutil.copy(run / "eval" / "metrics.json", tmp_path)  # evaluate's default before RUN_DIR/eval
    fid = json.loads((tmp_path / "metrics.json").read_text())["metrics"]["fid"]["value"]
    assert f">{fid:.4g}<" in write_report(tmp_path).read_text()


def test_run_directory_from_the_config_as_the_quickstart_calls_it(run, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"run_dir: {run}\n")
    out = tmp_path / "report.html"
    assert report_main(["--config", str(config), "--out", str(out)]) == 0
    assert "No evaluation yet" not in out.read_text() and len(embedded_pngs(out.read_text())) == 1 + len(STAGES)


def test_missing_run_directory_is_an_error(tmp_path):
    assert report_main([str(tmp_path / "absent")]) == 2
    assert report_main([]) == 2


def test_training_curves_keep_accuracy_off_the_loss_axis_and_throughput_from_zero():
    from eeg2im_scale.eval.report import stage_curves

    records = [{"step": s, "loss/loss": 2.0 / s, "loss/ce": 1.5 / s, "loss/accuracy": 0.2 * s,
                "samples_per_s": 900 + s, "data_wait_fraction": 0.1} for s in range(1, 5)]
    loss_ax, accuracy_ax, speed_ax = stage_curves("teacher", records).axes[:3]
    assert {line.get_label() for line in loss_ax.lines} == {"loss", "ce"}
    assert [line.get_label() for line in accuracy_ax.lines] == ["accuracy"] and accuracy_ax.get_ylim() == (0, 1)
    assert speed_ax.get_ylim()[0] == 0  # a throughput axis that starts at 900 exaggerates every wiggle
    for ax in (loss_ax, accuracy_ax):  # legends beside the axes, not over the curves
        assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1
