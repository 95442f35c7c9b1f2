"""A picture of a corpus: one stimulus per class with the EEG it evoked, to check data by eye."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..config import DataConfig  # noqa: E402
from .loader import EEGImageLoader  # noqa: E402


def first_per_class(loader: EEGImageLoader, classes: int) -> list[dict]:
    """The first trial of each of the first ``classes`` labels met in the loader's split."""
    found: dict[int, dict] = {}
    for batch in loader:
        for i, label in enumerate(batch["label"].tolist()):
            found.setdefault(label, {"eeg": batch["eeg"][i].numpy(), "label": label,
                                     "image": batch["image"][i].permute(1, 2, 0).numpy()})
        if len(found) >= classes:
            break
    return [found[k] for k in sorted(found)[:classes]]


def render_preview(root: str | Path, out: str | Path, split: str = "train", classes: int = 6) -> Path:
    """PNG of one stimulus per class above its raw EEG (every channel, and their mean)."""
    loader = EEGImageLoader(DataConfig(root=str(root), normalize=False, batch_size=64, synthesize=False),
                            split, train=False)
    trials = first_per_class(loader, classes)
    names, sfreq = loader.manifest.class_names, float(loader.manifest.info["sfreq"])
    fig, axes = plt.subplots(2, len(trials), figsize=(2.4 * len(trials), 4.6),
                             gridspec_kw={"height_ratios": [1, 0.9]}, squeeze=False)
    for column, trial in enumerate(trials):
        axes[0, column].imshow(trial["image"])
        axes[0, column].set_title(names[trial["label"]], fontsize=9)
        axes[0, column].axis("off")
        eeg = trial["eeg"]
        time_ms = np.arange(eeg.shape[1]) / sfreq * 1000
        axes[1, column].plot(time_ms, eeg.T, color="0.2", linewidth=0.3, alpha=0.35)
        axes[1, column].plot(time_ms, eeg.mean(axis=0), color="tab:red", linewidth=1.2)
        axes[1, column].set_xlabel("ms", fontsize=8)
        axes[1, column].tick_params(labelsize=7)
        if column == 0:
            axes[1, column].set_ylabel("µV (all channels, mean in red)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
