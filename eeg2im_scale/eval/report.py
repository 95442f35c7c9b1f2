"""One self-contained HTML page per run: ``RUN_DIR/report.html``.

``python -m eeg2im_scale.eval.report RUN_DIR|--config FILE [--eval-dir DIR] [--out FILE]``. The page opens
offline and can be mailed or archived as one file: images are embedded as base64 PNG, the CSS is
inline, and there is no JavaScript and no link to anything outside it. Whatever the run lacks
(no evaluation yet, a stage not trained) is said on the page instead of failing. The Protocols
section renders ``RUN_DIR/protocols.json``, written by ``eeg2im protocol``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import statistics
import sys
from datetime import datetime
from html import escape
from pathlib import Path

from ..config import STAGES, load_config
from .metric_info import METRICS, display_name

CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta, .note { color: #555; } .missing { color: #a33; font-style: italic; }
.summary { border: 1px solid #88a; background: #f4f6fb; padding: 0.6em 1.2em; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group th { background: #dde3f0; } img { max-width: 100%; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; }
.leak { border: 2px solid #a33; background: #fbeeee; padding: 0.5em 1em; border-radius: 4px; }
"""

# the headline metrics per summary group, with what each says in one line (names, definitions and chance
# rules: metric_info); {n_way}/{top_k} come from the protocol
SUMMARY = [
    ("EEG decoding", [
        ("eeg_top1", "the true class gets the EEG encoder's highest logit"),
        ("eeg_top5", "the true class is among the encoder's 5 highest logits"),
    ]),
    ("Generated images, judged by the teacher", [
        ("generated_n_way_top_k", "the fine-tuned image teacher ranks the true class in its top {top_k} of {n_way} "
                                  "candidates (the true one and random others)"),
        ("real_n_way_top_k", "the teacher's score on the real images: the ceiling for the line above; near chance, "
                             "the line above means nothing"),
    ]),
    ("Colour fidelity (generated vs true image)", [
        ("hue_error", "dominant hue of the image vs the recorded hue, in turns (0–0.5)"),
        ("saturation_error", "recovered vs recorded saturation of the dominant colour"),
        ("brightness_error", "recovered vs recorded brightness of the dominant colour"),
        ("hist_intersection", "HSV histograms, 1 = same colours"),
        ("hue_emd", "earth mover's distance of hue histograms, 0 = same hues"),
    ]),
    ("Structure (generated vs true image)", [
        ("ssim", "structural similarity, 1 = identical"),
        ("pixel_correlation", "Pearson correlation of pixel values"),
    ]),
    ("Image distribution (Inception features)", [
        ("inception_score", "confident and diverse class predictions"),
        ("fid", "Fréchet distance of real vs generated feature Gaussians"),
        ("kid", "kernel MMD² of real vs generated features"),
    ]),
]
INCEPTION_METRICS = ("inception_score", "fid", "kid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's arguments, shared by ``main`` and the ``eeg2im report`` subcommand."""
    parser.add_argument("run_dir", nargs="?", help="run directory, e.g. runs/quickstart (default: --config's)")
    parser.add_argument("--config", help="YAML config (configs/*.yaml) whose run_dir to report on")
    parser.add_argument("--eval-dir", default=None, help="where `eeg2im evaluate` wrote metrics.json, per_subject.csv "
                                                         "and grid.png (default: RUN_DIR/eval, else RUN_DIR)")
    parser.add_argument("--out", default=None, help="output HTML file (default: RUN_DIR/report.html)")


def cmd_report(args: argparse.Namespace) -> int:
    if not (args.run_dir or args.config):
        raise ValueError("give the run directory or --config")
    run_dir = args.run_dir or load_config(args.config).run_dir
    print(f"wrote {write_report(run_dir, args.out, args.eval_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_report(args)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"report: error: {exc}", file=sys.stderr)
        return 2


def write_report(run_dir: str | Path, out: str | Path | None = None, eval_dir: str | Path | None = None) -> Path:
    """Write the run's HTML report (default ``RUN_DIR/report.html``) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    out = Path(out) if out else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(run_dir, Path(eval_dir) if eval_dir else find_eval_dir(run_dir)))
    return out


def find_eval_dir(run_dir: Path) -> Path:
    """``eeg2im evaluate`` writes to RUN_DIR/eval; runs evaluated before that default hold it in RUN_DIR."""
    return next((d for d in (run_dir / "eval", run_dir) if (d / "metrics.json").is_file()), run_dir / "eval")


def render_report(run_dir: Path, eval_dir: Path) -> str:
    """The whole page as one string; reads the run, writes nothing."""
    metrics = _read_json(eval_dir / "metrics.json")
    stats = {stage: _read_stats(run_dir / "stages" / stage / "stats.jsonl") for stage in STAGES}
    sections = [
        _section("summary", "Summary", _summary(metrics, stats, eval_dir)),
        _section("samples", "Samples", _grid(eval_dir / "grid.png")),
        _section("metrics", "Metrics", _metrics_tables(metrics)),
        _section("per-subject", "Per subject", _per_subject(eval_dir / "per_subject.csv")),
        _section("protocols", "Protocols", _protocols(_read_json(run_dir / "protocols.json"))),
        _section("training", "Training curves", _training(stats)),
        _section("validation", "Validation", _validation(run_dir, list(stats))),
        _section("config", "Configuration", _config(run_dir / "config.yaml")),
    ]
    name = run_dir.resolve().name
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(name)} · eeg2im run report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>Run report: {escape(name)}</h1>\n<p class=\"meta\">{_dates(run_dir)}<br>"
            f"run directory <code>{escape(str(run_dir.resolve()))}</code></p>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def _dates(run_dir: Path) -> str:
    """Every launch of ``train`` (re)writes config.yaml before any work: its time dates the run."""
    config = run_dir / "config.yaml"
    launched = _when(config.stat().st_mtime) if config.is_file() else "unknown"
    return f"training last launched {launched} · report written {_when(datetime.now().timestamp())}"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_stats(path: Path) -> list[dict]:
    """The logged steps; a line still being written by a running job is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id=\"{anchor}\">\n<h2>{escape(title)}</h2>\n{body}\n</section>"


def _missing(text: str) -> str:
    return f"<p class=\"missing\">{escape(text)}</p>"


def _fmt(value) -> str:
    """Four significant digits; a {mean, std} metric as mean ± std."""
    if isinstance(value, dict) and {"mean", "std"} <= set(value):
        return f"{value['mean']:.4g} ± {value['std']:.2g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """A bordered table of text cells (escaped here); the ``numeric`` columns are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{escape(c)}</td>" if i in numeric else f"<td>{escape(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _png(data: bytes, alt: str) -> str:
    return f"<img alt=\"{escape(alt)}\" src=\"data:image/png;base64,{base64.b64encode(data).decode('ascii')}\">"


def _summary(metrics: dict | None, stats: dict[str, list[dict]], eval_dir: Path) -> str:
    """The headline numbers with what each means, so the page reads without the metric definitions."""
    status = _stage_status(stats)
    if metrics is None:
        return (f"<div class=\"summary\">{status}"
                + _missing(f"No evaluation yet: no metrics.json in {eval_dir}. Run `eeg2im evaluate --config "
                           f"CONFIG` (or pass --eval-dir).") + "</div>")
    protocol = metrics.get("protocol", {})
    values = {name: entry["value"] for name, entry in metrics["metrics"].items()}
    return (f"<div class=\"summary\">{status}{_protocol_line(protocol)}{_summary_table(metrics['metrics'], protocol)}"
            f"{_inception_note(protocol, values)}</div>")


def _stage_status(stats: dict[str, list[dict]]) -> str:
    trained = [s for s, records in stats.items() if records]
    untrained = [s for s, records in stats.items() if not records]
    text = f"Stages trained: {', '.join(trained) or 'none'}" + (f"; not trained: {', '.join(untrained)}" if untrained
                                                                else "")
    return f"<p>{escape(text)}.</p>"


def _protocol_line(protocol: dict) -> str:
    p = {key: escape(str(protocol.get(key, "?"))) for key in ("split", "split_by", "trials", "images_per_trial",
                                                              "sampler", "sample_steps", "guidance_scale")}
    trials = p["trials"]
    if protocol.get("partial"):
        trials = (f"<b>partial: {p['trials']} of the split's {escape(str(protocol.get('split_trials', '?')))}</b> "
                  f"(eval.max_trials)")
    return (f"<p>Evaluated on the <b>{p['split']}</b> split (split by {p['split_by']}): {trials} trials × "
            f"{p['images_per_trial']} generated images, {p['sampler']} sampler, {p['sample_steps']} steps, "
            f"guidance {p['guidance_scale']}.</p>")


def _chance_text(entry: dict) -> str:
    chance = entry.get("chance")
    if chance is not None:
        return _fmt(chance)
    rule = entry.get("chance_rule") or "—"
    return rule.removeprefix("reference: ")


def _summary_table(entries: dict, protocol: dict) -> str:
    """The SUMMARY groups, each metric only where metrics.json holds it, beside its chance level."""
    context = {"n_way": protocol.get("n_way", "n"), "top_k": protocol.get("top_k", "k")}
    rows = []
    for group, metrics in SUMMARY:
        present = [(key, text) for key, text in metrics if key in entries]
        if present:
            rows.append(f"<tr class=\"group\"><th colspan=\"4\">{escape(group)}</th></tr>")
        for key, text in present:
            entry = entries[key]
            name = entry.get("name") or display_name(key, **context)
            meaning = text.format(**context) + f"; {METRICS[key].better} is better"
            rows.append(f"<tr><td>{escape(name)}</td><td class=\"num\">{escape(_fmt(entry['value']))}</td>"
                        f"<td class=\"num\">{escape(_chance_text(entry))}</td><td>{escape(meaning)}</td></tr>")
    return ("<table>\n<tr><th>quantity</th><th>value</th><th>chance</th><th>meaning</th></tr>\n" + "\n".join(rows)
            + "\n</table>")


def _inception_note(protocol: dict, values: dict) -> str:
    """IS/FID/KID from a randomly initialised Inception only show that the pipeline runs."""
    if not any(m in values for m in INCEPTION_METRICS):
        return ""
    inception = str(protocol.get("inception", ""))
    if inception.startswith("random"):
        return ("<p class=\"note\"><b>Note:</b> IS, FID and KID were computed with a <b>randomly initialised</b> "
                "Inception network (<code>eval.random_inception=true</code>): they are not comparable to "
                "published numbers or to runs evaluated with the real FID Inception weights.</p>")
    return f"<p class=\"note\">IS, FID and KID use: {escape(inception)}.</p>"


def _grid(path: Path) -> str:
    if not path.is_file():
        return _missing(f"No sample grid: {path} does not exist.")
    return ("<p>Each row: the true image (left), then images generated from one EEG trial of it.</p>\n"
            + _png(path.read_bytes(), "true images and their generations"))


def _metrics_tables(metrics: dict | None) -> str:
    if metrics is None:
        return _missing("No evaluation yet.")
    rows = [[f"{entry.get('name', key)} ({key})", _fmt(entry["value"]), _chance_text(entry), entry.get("better", ""),
             f"{entry.get('definition', '')} ({entry.get('chance_rule', '')})"]
            for key, entry in metrics["metrics"].items()]
    protocol = [[key, json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value)]
                for key, value in metrics.get("protocol", {}).items()]
    return (_table(["metric", "value", "chance", "better", "definition (chance rule)"], rows, numeric=(1,))
            + "\n<h3>Protocol</h3>\n" + _table(["setting", "value"], protocol))


def _per_subject(path: Path) -> str:
    if not path.is_file():
        return _missing(f"No per-subject results: {path} does not exist.")
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return _table(header, rows, numeric=tuple(range(len(header))))


def _protocols(table: dict | None) -> str:
    """``eeg2im protocol``'s table: every accuracy with its chance level and binomial p-value, a
    warning for each control that beats chance, and how each protocol formed its splits."""
    if table is None:
        return _missing("No protocol results: no protocols.json in the run directory. Run `eeg2im protocol "
                        "{by-image,loso,held-out-classes,controls,retrieval} --config CONFIG` (docs/protocols.md).")
    leaks = [r for r in table["rows"] if r.get("leak")]
    warnings = "".join(
        f"<p class=\"leak\"><b>This corpus leaks</b> under data.split_by={escape(r['split_by'])}: the "
        f"{escape(r['variant'])} control scores {r['value']:.3g} against chance {r['chance']:.3g} "
        f"(p = {r['p_value']:.2g}). {escape(r['verdict'])}.</p>\n" for r in leaks)
    rows = [[r["protocol"], r["variant"], r["split_by"], r["metric"],
             _fmt(r["value"]) + (f" ± {r['spread']:.2g}" if r.get("spread") is not None else ""),
             _fmt(r["chance"]), str(r["trials"]), "—" if r["p_value"] is None else f"{r['p_value']:.2g}",
             "—" if r.get("train_accuracy") is None else _fmt(r["train_accuracy"]), r.get("probe") or "—",
             r["verdict"]]
            for r in table["rows"]]
    notes = "".join(f"<li><b>{escape(protocol)}</b>: {escape(note)}</li>\n"
                    for protocol, texts in table["notes"].items() for note in texts)
    return (warnings + f"<p>Accuracy on the test split of each protocol's own runs, beside chance (the best "
            f"constant guess: 1/classes on a balanced test set) and the one-sided binomial p-value of scoring that "
            f"well by guessing; verdicts at level {table['alpha']:g}. A control's training accuracy is its positive "
            f"control (a classifier that did not fit its training split makes the control inconclusive); a drift "
            f"probe row names the probe that decided it. Updated {escape(table['updated'])}.</p>\n"
            + _table(["protocol", "variant", "split", "metric", "value", "chance", "trials", "p", "train acc",
                      "probe", "verdict"], rows, numeric=(4, 5, 6, 7, 8))
            + f"\n<ul>\n{notes}</ul>")


def _training(stats: dict[str, list[dict]]) -> str:
    """Per stage: loss terms vs step, and throughput with the fraction of time spent waiting for data."""
    rows = [_throughput_row(stage, records) for stage, records in stats.items() if records]
    parts = [_table(["stage", "last step", "samples/s (median)", "data wait (mean)", "TFLOP/s (median)",
                     "peak memory MiB", "final loss"], rows, numeric=(1, 2, 3, 4, 5, 6))] if rows else []
    for stage, records in stats.items():
        parts.append(f"<h3>{escape(stage)}</h3>")
        parts.append(_png(_stage_figure(stage, records), f"{stage} training curves") if records
                     else _missing(f"Stage {stage} not trained (no stats.jsonl)."))
    return "\n".join(parts)


def _throughput_row(stage: str, records: list[dict]) -> list[str]:
    def summary(key, reduce):
        values = _series(records, key)[1]
        return _fmt(float(reduce(values))) if values else "—"

    return [stage, str(records[-1]["step"]), summary("samples_per_s", statistics.median),
            summary("data_wait_fraction", statistics.mean), summary("tflops_per_s", statistics.median),
            summary("peak_memory_mib", max), summary("loss/loss", lambda v: v[-1])]


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _stage_figure(stage: str, records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    stage_curves(stage, records).savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def stage_curves(stage: str, records: list[dict]):
    """A stage's curves as a matplotlib Figure (Agg, no pyplot: no global backend state): loss
    terms; accuracies on their own 0–1 axis; throughput from 0 with the data-wait fraction.
    Legends sit beside their axes, never over the curves."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    terms = sorted({k for r in records for k in r if k.startswith("loss/")})
    accuracies = [k for k in terms if "accuracy" in k]
    losses = [k for k in terms if k not in accuracies]
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    loss_ax, accuracy_ax, speed_ax = fig.subplots(1, 3, width_ratios=[1.6, 1, 1])
    for key in losses:
        loss_ax.plot(*_series(records, key), marker="o", markersize=2.5, label=key.removeprefix("loss/"))
    loss_ax.set(title=f"{stage}: loss terms", xlabel="step")
    for key in accuracies:
        accuracy_ax.plot(*_series(records, key), marker="o", markersize=2.5, label=key.removeprefix("loss/"))
    accuracy_ax.set(title="training accuracy" if accuracies else "no accuracy logged", xlabel="step", ylim=(0, 1))
    for ax in (loss_ax, accuracy_ax):
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    speed_ax.plot(*_series(records, "samples_per_s"), color="C0", marker="o", markersize=2.5)
    speed_ax.set(title="throughput", xlabel="step")
    speed_ax.set_ylim(bottom=0)
    speed_ax.set_ylabel("samples/s", color="C0")
    wait_ax = speed_ax.twinx()
    wait_ax.plot(*_series(records, "data_wait_fraction"), color="C3", marker="o", markersize=2.5)
    wait_ax.set_ylim(0, 1)
    wait_ax.set_ylabel("data-wait fraction", color="C3")
    for ax in (loss_ax, accuracy_ax, speed_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _validation(run_dir: Path, stages: list[str]) -> str:
    """Per stage: the mean loss terms over the validation split, computed when the stage finished."""
    rows = []
    for stage in stages:
        result = _read_json(run_dir / "stages" / stage / "validation.json")
        terms = ", ".join(f"{k} = {_fmt(v)}" for k, v in sorted(result.items()) if k != "samples") if result else ""
        rows.append([stage, str(result["samples"]) if result else "—", terms or "not validated (stage not finished)"])
    return _table(["stage", "samples", "mean loss terms"], rows, numeric=(1,))


def _config(path: Path) -> str:
    if not path.is_file():
        return _missing(f"No resolved configuration: {path} does not exist.")
    return (f"<details>\n<summary>config.yaml (resolved: the YAML file plus command-line overrides)</summary>\n"
            f"<pre>{escape(path.read_text())}</pre>\n</details>")


if __name__ == "__main__":
    sys.exit(main())
