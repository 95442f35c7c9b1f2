"""What an EEG foundation model expects as input, and the adapter that gives it that from a corpus.

A pretrained foundation model only means something on input like its pretraining data: its rate,
its patch length, its channels (by name, where it has an embedding per electrode) and its unit.
:data:`INPUT_SPECS` states those facts per model (sources in each entry); :func:`plan_input`
turns them and a corpus's geometry into an :class:`InputPlan` (what is resampled, cropped,
renamed, dropped and scaled), which :class:`InputAdapter` applies in the forward pass and
``corpus.json`` of a release records. A backbone without a spec sees the corpus as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

NEAREST = "nearest:"  # backbone_channel_map: nearest:<MNE standard montage of the corpus's channel names>


@dataclass(frozen=True)
class InputSpec:
    """One model's input facts. ``window``: n_times must be a multiple of it (its patch or STFT hop,
    in samples at ``sfreq``). ``channels``: ``position`` (any montage, channels by position),
    ``forward`` (names from ``montage``, passed per batch as ``forward(ch_names=...)``) or
    ``chs_info`` (names from ``montage``, given to the constructor). ``scale`` takes microvolts to
    the pretraining unit; it applies only to a corpus that is not z-scored (``data.normalize: false``)."""

    sfreq: float
    window: int
    channels: Literal["position", "forward", "chs_info"]
    montage: tuple[str, ...] = ()
    scale: float = 1.0
    unit: str = "uV"
    source: str = ""


def _labram(kwargs: dict) -> InputSpec:
    from braindecode.models.labram import LABRAM_CHANNEL_ORDER

    return InputSpec(200.0, int(kwargs.get("patch_size", 200)), "forward", tuple(n.upper() for n in LABRAM_CHANNEL_ORDER),
                     0.01, "0.1 mV",
                     "braindecode labram.py: patch_size=200 (1 s at 200 Hz), a position embedding per name of "
                     "LABRAM_CHANNEL_ORDER selected by forward(ch_names=); LaBraM (Jiang 2024) divides uV by 100")


def _cbramod(kwargs: dict) -> InputSpec:
    return InputSpec(200.0, int(kwargs.get("patch_size", 200)), "position", (), 0.01, "0.1 mV",
                     "braindecode cbramod.py: patch_size=200 samples = 1 s at 200 Hz, n_times a whole number of "
                     "patches (einops rearrange); channels by position (ACPE); CBraMod (Wang 2025) uses 100 uV units")


def _eegpt(kwargs: dict) -> InputSpec:
    from braindecode.models.eegpt import EEGPT_CHANNELS

    by_name = kwargs.get("chan_proj_type", "conv1d_constraint") == "none"
    return InputSpec(256.0, int(kwargs.get("patch_size", 64)), "chs_info" if by_name else "position",
                     tuple(EEGPT_CHANNELS) if by_name else (), 1e-3, "mV",
                     "braindecode eegpt.py: patch_size=64; chan_proj_type='none' embeds channels by chs_info name "
                     "(EEGPT_CHANNELS), the default learns a projection onto its 19 channels from any montage; "
                     "EEGPT (Wang 2024) pretrained at 256 Hz on mV")


def _biot(kwargs: dict) -> InputSpec:
    return InputSpec(200.0, int(kwargs.get("hop_length", 100)), "position", (), 1.0, "uV",
                     "braindecode biot.py: warns unless sfreq=200, STFT with n_fft=sfreq and hop_length=100; "
                     "channels by position (a learned embedding per index); BIOT (Yang 2023) scales each channel "
                     "by its 95th percentile, for which the corpus z-scoring stands in")


INPUT_SPECS: dict[str, Callable[[dict], InputSpec]] = {"Labram": _labram, "CBraMod": _cbramod, "EEGPT": _eegpt,
                                                       "BIOT": _biot}


def input_spec(backbone: str, kwargs: dict | None = None) -> InputSpec | None:
    """The input spec of ``backbone`` under its ``backbone_kwargs`` (None: it takes the corpus as is)."""
    make = INPUT_SPECS.get(backbone)
    return make(dict(kwargs or {})) if make else None


@dataclass
class InputPlan:
    """What the encoder sees of a corpus: which channels (corpus index, name it is given), the
    rate, the length and the scale. ``matrix`` [n_times, source_n_times] resamples, crops or pads
    and scales in one product (None: the identity)."""

    backbone: str
    channel_index: list[int]
    channel_names: list[str]
    dropped: list[str]
    renamed: dict[str, str]
    source_sfreq: float
    sfreq: float
    source_n_times: int
    resampled_n_times: int
    n_times: int
    scale: float
    unit: str
    spec: InputSpec | None
    matrix: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_chans(self) -> int:
        return len(self.channel_index)

    def constructor_kwargs(self) -> dict:
        if self.spec is not None and self.spec.channels == "chs_info":
            return {"chs_info": [{"ch_name": name, "kind": "eeg"} for name in self.channel_names]}
        return {}

    def forward_kwargs(self) -> dict:
        return {"ch_names": list(self.channel_names)} if self.spec is not None and self.spec.channels == "forward" else {}

    def record(self) -> dict:
        """The plan as ``corpus.json`` records it, for a reader of a release."""
        if self.spec is None:
            return {"backbone": self.backbone, "adapted": False, "channels": self.n_chans, "sfreq": self.sfreq,
                    "n_times": self.n_times}
        length = ("kept" if self.n_times == self.resampled_n_times else
                  f"cropped to {self.n_times}" if self.n_times < self.resampled_n_times else
                  f"zero-padded to {self.n_times}")
        return {"backbone": self.backbone, "adapted": True,
                "sfreq": {"from": self.source_sfreq, "to": self.sfreq,
                          "resampling": "scipy.signal.resample_poly (polyphase, Kaiser-windowed FIR), as a matrix"
                          if self.sfreq != self.source_sfreq else "none"},
                "n_times": {"from": self.source_n_times, "resampled": self.resampled_n_times, "to": self.n_times,
                            "window_multiple": self.spec.window, "length": length},
                "channels": {"used": self.channel_names, "renamed": self.renamed, "dropped": self.dropped,
                             "passed_as": self.spec.channels},
                "scale": {"factor": self.scale, "unit": self.unit},
                "source": self.spec.source}


def plan_input(backbone: str, kwargs: dict | None, channel_map: dict | str | None, channel_names: list[str],
               sfreq: float, n_times: int, normalized: bool, key: str) -> InputPlan:
    """The adaptation of a corpus (``channel_names``, ``sfreq``, ``n_times``; ``normalized``: z-scored
    by ``data.normalize``) to ``backbone``. ``key`` names the config section in errors
    (``model.highlevel``). Raises ValueError naming every channel the model cannot place."""
    spec = input_spec(backbone, kwargs)
    index, names, renamed, dropped = _channels(spec, channel_map, list(channel_names), key, backbone)
    if spec is None:
        return InputPlan(backbone, index, names, dropped, renamed, sfreq, sfreq, n_times, n_times, n_times, 1.0, "corpus",
                         None, None)
    up, down = _ratio(sfreq, spec.sfreq)
    resampled = -(-n_times * up // down)  # resample_poly's output length: ceil(n * up / down)
    length = max(resampled // spec.window, 1) * spec.window  # crop to whole windows, or pad a short trial to one
    scale, unit = (1.0, "z-score (data.normalize)") if normalized else (spec.scale, spec.unit)
    matrix = None
    if (up, down) != (1, 1) or length != n_times or scale != 1.0:
        matrix = _resampling_matrix(n_times, up, down)[:length] * scale
        matrix = np.pad(matrix, ((0, length - len(matrix)), (0, 0)))
    return InputPlan(backbone, index, names, dropped, renamed, sfreq, spec.sfreq, n_times, resampled, length, scale, unit,
                     spec, matrix)


def _ratio(source: float, target: float) -> tuple[int, int]:
    ratio = (Fraction(target).limit_denominator(10**6) / Fraction(source).limit_denominator(10**6)).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


@functools.lru_cache(maxsize=8)
def _resampling_matrix(n_times: int, up: int, down: int) -> np.ndarray:
    """[ceil(n*up/down), n]: scipy's polyphase resampler applied to the identity, so one matrix
    product resamples exactly as ``resample_poly`` (its anti-aliasing filter, zero-padded edges)."""
    from scipy.signal import resample_poly

    if (up, down) == (1, 1):
        return np.eye(n_times, dtype=np.float32)
    return resample_poly(np.eye(n_times, dtype=np.float64), up, down, axis=0).astype(np.float32)


def _channels(spec: InputSpec | None, channel_map: dict | str | None, corpus: list[str], key: str,
              backbone: str) -> tuple[list[int], list[str], dict[str, str], list[str]]:
    """(corpus indices kept, the names the model is given, renames, dropped corpus names)."""
    montage = spec.montage if spec is not None else ()
    if isinstance(channel_map, str):
        channel_map = _nearest_map(channel_map, corpus, montage, key, backbone)
    mapping = {str(k).upper(): v for k, v in (channel_map or {}).items()}
    bad = [f"{k}: {v!r}" for k, v in mapping.items() if v is not None and not isinstance(v, str)]
    if bad:
        raise ValueError(f"{key}.backbone_channel_map: values must be channel names or null (drop), got {', '.join(bad)}")
    unknown_keys = sorted(set(mapping) - {c.upper() for c in corpus})
    if unknown_keys:
        raise ValueError(f"{key}.backbone_channel_map names channels the corpus does not have: {', '.join(unknown_keys)} "
                         f"(the corpus's channel_names: {', '.join(corpus)})")
    index, names, renamed, dropped = [], [], {}, []
    for i, name in enumerate(corpus):
        target = mapping.get(name.upper(), name)
        if target is None:
            dropped.append(name)
            continue
        index.append(i)
        names.append(target.upper() if montage else target)
        if target != name:
            renamed[name] = target
    if not index:
        raise ValueError(f"{key}.backbone_channel_map drops every channel of the corpus")
    if montage:
        known = set(montage)
        missing = [corpus[i] + (f" (as {n})" if n != corpus[i].upper() else "") for i, n in zip(index, names)
                   if n not in known]
        if missing:
            raise ValueError(
                f"{key}.backbone={backbone} embeds each channel by name and does not know {len(missing)} of the corpus's "
                f"{len(corpus)} channels: {', '.join(missing[:12])}{', ...' if len(missing) > 12 else ''}. Its montage has "
                f"{len(montage)} names ({', '.join(montage[:8])}, ...). Set {key}.backbone_channel_map to "
                f"'{NEAREST}<MNE montage of your channel names>' (e.g. {NEAREST}biosemi128: each channel renamed to the "
                f"nearest electrode of the model's montage), or to a mapping {{corpus name: model name, or null to drop "
                f"it}}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{key}.backbone_channel_map gives several corpus channels the same name: {', '.join(twice)}")
    return index, names, renamed, dropped


def _nearest_map(value: str, corpus: list[str], montage: tuple[str, ...], key: str, backbone: str) -> dict[str, str]:
    """``nearest:<montage>``: each corpus channel (positioned by that MNE standard montage) renamed to
    a distinct electrode of the model's montage (positioned by MNE's 10-05 montage), minimising the total
    distance (Hungarian assignment)."""
    import mne
    from scipy.optimize import linear_sum_assignment

    if not value.startswith(NEAREST) or len(value) == len(NEAREST):
        raise ValueError(f"{key}.backbone_channel_map: {value!r} is neither a mapping nor '{NEAREST}<MNE montage>'")
    if not montage:
        raise ValueError(f"{key}.backbone_channel_map: {value!r}, but {backbone} takes channels by position, not name; "
                         f"remove the key")
    name = value[len(NEAREST):]
    if name not in mne.channels.get_builtin_montages():
        raise ValueError(f"{key}.backbone_channel_map: {name!r} is not an MNE standard montage "
                         f"({', '.join(mne.channels.get_builtin_montages())})")
    theirs = {k.upper(): v for k, v in mne.channels.make_standard_montage(name).get_positions()["ch_pos"].items()}
    missing = [c for c in corpus if c.upper() not in theirs]
    if missing:
        raise ValueError(f"{key}.backbone_channel_map: {name} has no position for {', '.join(missing[:12])}; "
                         f"name the montage the corpus was recorded with, or map the channels by hand")
    # MNE renames standard_1005 to colin27_1005 (1.12); the positions are the same
    dense = next(m for m in ("colin27_1005", "standard_1005") if m in mne.channels.get_builtin_montages())
    reference = {k.upper(): v for k, v in mne.channels.make_standard_montage(dense).get_positions()["ch_pos"].items()}
    candidates = [m for m in montage if m in reference]
    if len(candidates) < len(corpus):
        raise ValueError(f"{key}.backbone_channel_map: {len(corpus)} channels, but {backbone}'s montage places only "
                         f"{len(candidates)}; drop some with a mapping to null")
    ours = np.array([theirs[c.upper()] for c in corpus])
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    target = np.array([reference[m] for m in candidates])
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    rows, cols = linear_sum_assignment(np.linalg.norm(ours[:, None] - target[None], axis=2))
    return {corpus[r]: candidates[c] for r, c in zip(rows, cols)}


class InputAdapter(nn.Module):
    """Applies an :class:`InputPlan` to [B, corpus channels, corpus n_times]. It holds no
    parameters and its buffers are not persistent: weights and checkpoints are the backbone's as
    before, and the plan is rebuilt from the config and the corpus."""

    def __init__(self, plan: InputPlan):
        super().__init__()
        self.plan = plan
        every = plan.channel_index == list(range(len(plan.channel_index))) and not plan.dropped
        self.register_buffer("index", None if every else torch.tensor(plan.channel_index), persistent=False)
        self.register_buffer("matrix", None if plan.matrix is None else torch.from_numpy(plan.matrix.T.copy()),
                             persistent=False)

    def forward(self, eeg: torch.Tensor) -> torch.Tensor:
        if self.index is not None:
            eeg = eeg.index_select(1, self.index)
        if self.matrix is not None:
            eeg = eeg @ self.matrix.to(eeg.dtype)
        return eeg
