"""Generative-image metrics (FID, IS, KID) as pure functions of Inception outputs.

Numbers follow torch-fidelity 0.4.0 (same formulas, split rule, kernel and subset sampling), so
they are comparable with published values computed by torch-fidelity / pytorch-fid. Everything is
float64: FID is a difference of large traces and loses digits in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["FeatureStats", "fid_from_stats", "frechet_distance", "inception_score", "kid"]


class FeatureStats:
    """Float64 sufficient statistics (Σx, XᵀX, N) of a feature set.

    FID needs only the mean and covariance, and both follow from these sums, which add across
    batches and processes: each process accumulates its share, ``to_tensor()`` gives one flat
    tensor to all-reduce (sum), and ``from_tensor()`` rebuilds the total. The default ``dim`` is
    the 2048-d pool3 width, so a process that saw no images still contributes a zero tensor of the
    right length to the reduction. Sums live on the CPU.
    """

    def __init__(self, dim: int = 2048):
        self.dim = int(dim)
        self.sum = torch.zeros(self.dim, dtype=torch.float64)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.count = 0

    def update(self, features: torch.Tensor) -> FeatureStats:
        """Add a [N, dim] batch (cast to float64 before summing, so no float32 products)."""
        x = features.detach().to("cpu", torch.float64)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape [N, {self.dim}], got {tuple(x.shape)}")
        self.sum += x.sum(dim=0)
        self.outer += x.T @ x
        self.count += x.shape[0]
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of the union of both feature sets (a new object)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {self.dim} and {other.dim}")
        out = FeatureStats(self.dim)
        out.sum = self.sum + other.sum
        out.outer = self.outer + other.outer
        out.count = self.count + other.count
        return out

    __add__ = merge

    def to_tensor(self) -> torch.Tensor:
        """[count, sum (dim), outer (dim²)] as one flat float64 tensor; summing these is merging."""
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        return torch.cat([count, self.sum, self.outer.flatten()])

    @classmethod
    def from_tensor(cls, flat: torch.Tensor) -> FeatureStats:
        """Inverse of ``to_tensor`` (dim inferred from the length 1 + dim + dim²)."""
        flat = flat.detach().to("cpu", torch.float64).flatten()
        dim = round((-1 + math.sqrt(1 + 4 * (flat.numel() - 1))) / 2)
        if 1 + dim + dim * dim != flat.numel():
            raise ValueError(f"a flat FeatureStats tensor has length 1 + d + d², got {flat.numel()}")
        out = cls(dim)
        out.count = round(float(flat[0]))
        out.sum = flat[1 : 1 + dim].clone()
        out.outer = flat[1 + dim :].reshape(dim, dim).clone()
        return out

    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise ValueError("mean of an empty feature set")
        return self.sum / self.count

    def cov(self) -> torch.Tensor:
        """Unbiased (N−1) covariance, as np.cov in torch-fidelity / pytorch-fid."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, got {self.count}")
        mu_outer = torch.outer(self.sum, self.sum) / self.count
        cov = (self.outer - mu_outer) / (self.count - 1)
        return (cov + cov.T) / 2  # exactly symmetric despite rounding


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negative eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), in float64.

    Tr((Σ1Σ2)^½) is taken as Σ √λ of S Σ2 S with S = Σ1^½: it has the same eigenvalues as Σ1Σ2
    but is symmetric PSD, so ``eigh`` is stable and needs neither the complex sqrtm nor
    pytorch-fid's ε-offset retry when a covariance is singular (fewer samples than dimensions).
    """
    mu1, mu2 = (np.asarray(torch.as_tensor(m).cpu(), dtype=np.float64) for m in (mu1, mu2))
    s1, s2 = (np.asarray(torch.as_tensor(s).cpu(), dtype=np.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    root1 = _sym_sqrt((s1 + s1.T) / 2)
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two accumulated (possibly all-reduced) feature sets."""
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())


def inception_score(logits_or_probs: torch.Tensor, splits: int = 10, *, probs: bool = False,
                    shuffle: bool = True, seed: int = 2020) -> tuple[float, float]:
    """Inception score exp(E_x KL(p(y|x) ‖ p(y))): (mean, population std) over ``splits`` splits.

    As torch-fidelity's ``isc_features_to_metric``: rows permuted by ``RandomState(seed)`` (its
    ``samples_shuffle``/``rng_seed`` defaults), split i = rows [i·N//splits, (i+1)·N//splits),
    float64 softmax/log_softmax of logits. torch-fidelity feeds the *unbiased* logits (pool3 ·
    Wᵀ, no fc bias, as the original improved-GAN code), which is what ``inception.extract`` returns.
    ``probs=True`` takes rows that are already probabilities (0·log 0 = 0).
    """
    x = torch.as_tensor(logits_or_probs).detach().cpu()
    if x.dim() != 2:
        raise ValueError(f"expected [N, C], got {tuple(x.shape)}")
    n = x.shape[0]
    if n < splits:
        raise ValueError(f"inception_score needs at least `splits` ({splits}) samples, got {n}")
    if shuffle:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    x = x.double()
    if probs:
        p, log_p = x, x.log()
    else:
        p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        p_c, log_p_c = p[rows], log_p[rows]
        q = p_c.mean(dim=0, keepdim=True)
        kl = p_c * (log_p_c - q.log())
        if probs:
            kl = torch.where(p_c > 0, kl, torch.zeros_like(kl))
        scores.append(kl.sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD²: within-set kernel means without the diagonal, cross term with it."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1, seed: int = 2020) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with k(x, y) = (γ x·y + c)^d, γ = 1/D by default;
    (mean, population std) over ``subsets`` random subsets.

    As torch-fidelity's ``kid_features_to_metric``: one ``RandomState(seed)`` draws, per subset,
    ``choice(N_a, m, replace=False)`` then ``choice(N_b, m, replace=False)``, so with the same seed
    the subsets are identical. Unlike torch-fidelity (which refuses), ``subset_size`` is clipped to
    the smaller set so small evaluations still produce a number.
    """
    fa = np.asarray(torch.as_tensor(features_a).detach().cpu(), dtype=np.float64)
    fb = np.asarray(torch.as_tensor(features_b).detach().cpu(), dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"expected [N, D] features of equal D, got {fa.shape} and {fb.shape}")
    m = min(subset_size, len(fa), len(fb))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(fa)} and {len(fb)}")
    g = 1.0 / fa.shape[1] if gamma is None else gamma

    def kernel(x, y):
        return (x @ y.T * g + coef0) ** degree

    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = fa[rng.choice(len(fa), m, replace=False)]
        y = fb[rng.choice(len(fb), m, replace=False)]
        mmds[i] = _mmd2_unbiased(kernel(x, x), kernel(x, y), kernel(y, y))
    return float(np.mean(mmds)), float(np.std(mmds))
