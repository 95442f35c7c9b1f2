"""``RUN_DIR/protocols.json``: one table of every protocol's results, chance beside each accuracy.

Each row is one number: ``protocol``, ``variant`` (fold, control, ...), ``metric``, ``value``
(a summary over folds, LOSO's or retrieval's, adds ``spread``), ``chance``, ``trials`` and ``correct`` (where the value is a
count of hits), the one-sided binomial ``p_value`` against chance, the ``verdict``, ``leak``
(controls only: true when the control beats chance; null when it is inconclusive), the control's
``train_accuracy`` (its positive control) and the drift ``probe`` that decided the row, the ``split_by`` scheme and the ``run_dir``
that produced it. Invocations merge: a row replaces the row of the same (protocol, variant,
metric), so folds run as separate jobs end up in one table, and the summaries over folds are
recomputed from every fold row present.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from .stats import binomial_p_value, mean_and_spread

TABLE = "protocols.json"
LOSO_SUMMARY = "mean ± std over folds"
VERDICTS = {  # (p < alpha, p >= alpha) per kind of row
    None: ("above chance", "not above chance"),
    "shuffled": ("LEAKS: above chance with shuffled training labels, so labels reach the model another way",
                 "at chance, as it must be"),
    "drift": (("LEAKS: EEG that cannot carry the stimulus decodes the class, so accuracies under this split "
               "are inflated (block-design drift)"), "no leakage detected"),
}


def learned(train_correct: int, train_trials: int, train_chance: float, alpha: float, margin: float) -> bool:
    """A control's positive control: its classifier fitted its own training split, i.e. beat that
    split's chance by at least ``margin`` and significantly (level ``alpha``). A control whose
    classifier learned nothing cannot show that nothing leaks."""
    accuracy = train_correct / train_trials
    return accuracy >= train_chance + margin and binomial_p_value(train_correct, train_trials, train_chance) < alpha


def accuracy_row(protocol: str, variant: str, metric: str, correct: int, trials: int, chance: float,
                 alpha: float, *, split_by: str, run_dir: str, control: str | None = None, p_value: float | None = None,
                 fit: dict | None = None, probe: str | None = None, untestable: str | None = None) -> dict:
    """A row for ``correct`` hits out of ``trials``, tested against ``chance`` at level ``alpha``
    (or with a given, e.g. corrected, ``p_value``). A control's ``fit`` (``train_accuracy``,
    ``train_chance``, ``learned``) is its positive control: a control that does not beat chance
    says "no leakage" only when its classifier learned its training split and the file can show
    drift at all (``untestable``: why it cannot)."""
    p_value = binomial_p_value(correct, trials, chance) if p_value is None else p_value
    verdict, leak = VERDICTS[control][0 if p_value < alpha else 1], None if control is None else bool(p_value < alpha)
    if leak and probe is not None:
        verdict += f"; flagged by the {probe} probe"
    if control is not None and not leak:
        if untestable is not None and control == "drift":
            verdict, leak = f"drift cannot be tested on this file ({untestable}): compare `data.split_by=block`", None
        elif fit is not None and not fit["learned"]:
            verdict, leak = (f"inconclusive: the control's classifier did not learn (training accuracy "
                             f"{fit['train_accuracy']:.2f}, chance {fit['train_chance']:.2f})"), None
    return {"protocol": protocol, "variant": variant, "metric": metric, "value": correct / trials, "chance": chance,
            "trials": trials, "correct": correct, "p_value": p_value, "verdict": verdict, "leak": leak,
            "train_accuracy": None if fit is None else fit["train_accuracy"], "probe": probe,
            "split_by": split_by, "run_dir": run_dir}


def value_row(protocol: str, variant: str, metric: str, value: float, chance: float, trials: int, *,
              split_by: str, run_dir: str) -> dict:
    """A row for an accuracy that is no count of hits (averaged over random draws): no test."""
    return {"protocol": protocol, "variant": variant, "metric": metric, "value": value, "chance": chance,
            "trials": trials, "correct": None, "p_value": None, "verdict": "no test (an average over random draws)",
            "leak": None, "split_by": split_by, "run_dir": run_dir}


def summary_variant(protocol: str, row: dict) -> str | None:
    """The summary row a fold row belongs to (None: the protocol has no folds). Retrieval's intra-
    and inter-subject folds are summarised apart: the field never pools them."""
    if protocol == "loso":
        return LOSO_SUMMARY
    if protocol == "retrieval":
        return f"{row['mode']}-subject mean ± std over subjects"
    return None


def fold_summaries(protocol: str, rows: list[dict], alpha: float) -> list[dict]:
    """Per metric (and summary variant): mean ± sample std of the fold values, tested on the
    pooled hits against the trial-weighted chance. Summary rows are those with a ``spread``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        variant = summary_variant(protocol, row) if row["protocol"] == protocol and "spread" not in row else None
        if variant is not None:
            groups.setdefault((row["metric"], variant), []).append(row)
    summaries = []
    for (metric, variant), folds in groups.items():
        mean, spread = mean_and_spread([r["value"] for r in folds])
        trials = sum(r["trials"] for r in folds)
        correct = sum(r["correct"] for r in folds)
        chance = sum(r["chance"] * r["trials"] for r in folds) / trials
        p_value = binomial_p_value(correct, trials, chance)
        summaries.append({
            "protocol": protocol, "variant": variant, "metric": metric, "value": mean, "spread": spread,
            "chance": chance, "trials": trials, "correct": correct, "p_value": p_value,
            "verdict": VERDICTS[None][0 if p_value < alpha else 1] + f" ({len(folds)} folds, pooled test)",
            "leak": None, "split_by": folds[0]["split_by"].partition(":")[0],
            "run_dir": str(Path(folds[0]["run_dir"]).parent),
            **({"mode": folds[0]["mode"]} if "mode" in folds[0] else {})})
    return summaries


def read_table(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / TABLE
    return json.loads(path.read_text()) if path.is_file() else None


def update_table(run_dir: str | Path, protocol: str, rows: list[dict], notes: list[str], alpha: float) -> dict:
    """Merge one invocation's rows and notes into ``RUN_DIR/protocols.json`` (atomically) and return the table."""
    table = read_table(run_dir) or {"rows": [], "notes": {}}
    keys = {(r["protocol"], r["variant"], r["metric"]) for r in rows}
    merged = [r for r in table["rows"] if (r["protocol"], r["variant"], r["metric"]) not in keys] + rows
    merged = [r for r in merged if not (r["protocol"] == protocol and "spread" in r)]
    merged += fold_summaries(protocol, merged, alpha)
    table = {"updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "alpha": alpha,
             "rows": merged, "notes": {**table["notes"], protocol: notes}}
    path = Path(run_dir) / TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TABLE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(path)
    return table
