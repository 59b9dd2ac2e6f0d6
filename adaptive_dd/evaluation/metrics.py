"""Image-quality and diversity metrics of a distilled set, computed on feature vectors.

Every metric takes (n, d) features, not images, so the feature space is the caller's choice. The evaluation's
default space is the teacher's penultimate layer (`adaptive_dd.fidelity.Teacher.features`): results in it must be
labelled "teacher features", since they are not comparable with the Inception-space numbers of the literature.
`inception_features` gives torch-fidelity's Inception-v3 pool features when its weights file is on disk; it
never downloads them.

Definitions follow the reference implementations, which the tests compare against: FID and KID as torch-fidelity
0.4.0 (`fid_features_to_statistics` / `fid_statistics_to_metric`, `kid_features_to_metric`); precision, recall,
density and coverage as Naeem et al.'s prdc 0.2. Diversity: the Vendi score and the class-conditional Renyi mutual
information behind the repulsion term (eq. 6). All arithmetic is float64 numpy.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.spatial.distance import cdist

Features = np.ndarray | torch.Tensor
Kernel = Literal["cosine", "rbf"]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"


def _as_features(x: Features, name: str) -> np.ndarray:
    """A float64 (n, d) array, so that results do not depend on the caller's dtype or device."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} features must be a 2-D (n, d) array, got shape {a.shape}")
    return a


def _pair(real: Features, fake: Features, min_n: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets, checked for a common dimension and the metric's minimum size."""
    r, f = _as_features(real, "real"), _as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {r.shape[1]} vs {f.shape[1]}")
    if min(len(r), len(f)) < min_n:
        raise ValueError(f"{metric} needs at least {min_n} samples per set, got {len(r)} real and {len(f)} fake")
    return r, f


def _cov_factor(x: np.ndarray) -> np.ndarray:
    """R with R^T R = the unbiased covariance (np.cov, rowvar=False): min(n, d) rows, from a QR of centred data."""
    return np.linalg.qr((x - x.mean(0)) / np.sqrt(len(x) - 1), mode="r")


def fid(real: Features, fake: Features) -> float:
    """Frechet distance ||mu_r - mu_f||^2 + tr S_r + tr S_f - 2 tr (S_r S_f)^(1/2) between Gaussian fits.

    As torch-fidelity: mean and unbiased covariance. tr (S_r S_f)^(1/2) is the sum of the square roots of the
    eigenvalues of S_r S_f; torch-fidelity takes them from a non-symmetric np.linalg.eigvals and keeps the real part
    of their complex square roots (round-off below 0 counts as 0). With S = R^T R, those eigenvalues are the squared
    singular values of R_r R_f^T, so the trace is its nuclear norm: the same number without complex round-off, valid
    for singular covariances (n <= d) and in O(n d^2) rather than O(d^3).
    """
    r, f = _pair(real, fake, 2, "FID")
    factor_r, factor_f = _cov_factor(r), _cov_factor(f)
    diff = r.mean(0) - f.mean(0)
    tr_covmean = np.linalg.svd(factor_r @ factor_f.T, compute_uv=False).sum()
    return float(diff @ diff + (factor_r ** 2).sum() + (factor_f ** 2).sum() - 2 * tr_covmean)


def kid(real: Features, fake: Features, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 2020) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over random subsets of the unbiased MMD^2, polynomial kernel.

    k(x, y) = (gamma x.y + coef0)^degree with gamma = 1/d by default. Subsets are drawn exactly as
    torch-fidelity's kid_features_to_metric(real, fake) draws them (np.random.RandomState(seed), per subset a real
    then a fake choice without replacement; seed 2020 is its rng_seed default), so equal arguments give its numbers.
    torch-fidelity raises when a set is smaller than subset_size; here subset_size is clipped to
    min(subset_size, n_real, n_fake), which equals calling it with that subset size, so 10 images (IPC 1 of 10
    classes) still give a KID, with std 0 once every subset is the whole of both sets.
    Kernel matrices of the full sets are computed once and subsets summed from them: memory O((n_real + n_fake)^2).
    """
    r, f = _pair(real, fake, 2, "KID")
    size = min(subset_size, len(r), len(f))
    gamma = 1.0 / r.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(len(r), size, replace=False), rng.choice(len(f), size, replace=False))
             for _ in range(subsets)]
    rows = np.arange(subsets)[:, None]
    pick_r, pick_f = np.zeros((subsets, len(r))), np.zeros((subsets, len(f)))
    pick_r[rows, np.stack([d[0] for d in draws])] = 1.0
    pick_f[rows, np.stack([d[1] for d in draws])] = 1.0
    k_rr, k_ff, k_rf = ((a @ b.T * gamma + coef0) ** degree for a, b in ((r, r), (f, f), (r, f)))
    within_r = ((pick_r @ k_rr) * pick_r).sum(1) - pick_r @ np.diag(k_rr)
    within_f = ((pick_f @ k_ff) * pick_f).sum(1) - pick_f @ np.diag(k_ff)
    cross = ((pick_r @ k_rf) * pick_f).sum(1)
    mmd2 = (within_r + within_f) / (size * (size - 1)) - 2 * cross / size ** 2
    return float(mmd2.mean()), float(mmd2.std())


def _knn_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in its own set (itself, at 0, is the 0-th)."""
    return np.partition(cdist(x, x), k, axis=1)[:, k]


def prdc(real: Features, fake: Features, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. (2020), as their prdc package computes them.

    Each point's ball has the radius of its k-th nearest neighbour in its own set; membership is strict (<).
    Precision: share of fakes inside some real ball. Recall: share of reals inside some fake ball. Density: mean
    number of real balls holding a fake, over k. Coverage: share of real balls holding at least one fake.
    """
    r, f = _pair(real, fake, k + 1, f"prdc with k = {k}")
    dist = cdist(r, f)
    in_real_ball = dist < _knn_radius(r, k)[:, None]
    in_fake_ball = dist < _knn_radius(f, k)[None, :]
    return {"precision": float(in_real_ball.any(0).mean()), "recall": float(in_fake_ball.any(1).mean()),
            "density": float(in_real_ball.sum(0).mean() / k), "coverage": float(in_real_ball.any(1).mean())}


def kernel_matrix(features: Features, kernel: Kernel = "cosine", sigma: float | None = None) -> np.ndarray:
    """PSD kernel matrix with k(x, x) = 1, so that K/n has unit trace and its eigenvalues are a distribution.

    "cosine": cosine similarity (dot products of L2-normalised features), scale-free, so no bandwidth to choose.
    "rbf": exp(-||x - y||^2 / (2 sigma^2)), the kernel of the repulsion term (eq. 6); sigma must be given, because a
    data-dependent bandwidth would make scores of different sets incomparable.
    """
    x = _as_features(features, "the")
    if kernel == "cosine":
        norms = np.linalg.norm(x, axis=1)
        if not norms.all():
            raise ValueError(f"the cosine kernel needs non-zero features; rows {np.flatnonzero(norms == 0)} are zero")
        unit = x / norms[:, None]
        k = unit @ unit.T
        np.fill_diagonal(k, 1.0)
        return k
    if kernel == "rbf":
        if sigma is None or sigma <= 0:
            raise ValueError(f"the rbf kernel needs a positive bandwidth sigma, got {sigma}")
        return np.exp(-cdist(x, x, "sqeuclidean") / (2 * sigma ** 2))
    raise ValueError(f"unknown kernel {kernel!r}; use 'cosine' or 'rbf'")


def _renyi_entropy(k: np.ndarray, order: int) -> float:
    """Renyi entropy (nats) of the eigenvalues lambda of K/n: order 1 Shannon, order 2 -log sum lambda^2.

    Order 2 needs no eigendecomposition: sum lambda^2 = ||K/n||_F^2.
    """
    n = len(k)
    if order == 2:
        return float(-np.log((k ** 2).sum() / n ** 2))
    if order == 1:
        lam = np.linalg.eigvalsh(k / n)
        lam = lam[lam > 0]
        return float(-(lam * np.log(lam)).sum())
    raise ValueError(f"order must be 1 or 2, got {order}")


def vendi(features: Features, order: int = 1, kernel: Kernel = "cosine", sigma: float | None = None) -> float:
    """Vendi score (Friedman and Dieng, 2023): the effective number of distinct samples, from 1 to n.

    exp of the order-`order` Renyi entropy of the eigenvalues of K/n: order 1 exp(-sum lambda log lambda),
    order 2 1 / ||K/n||_F^2. n identical points score 1, n mutually orthogonal ones n (cosine kernel).
    """
    return float(np.exp(_renyi_entropy(kernel_matrix(features, kernel, sigma), order)))


def _class_masks(labels: np.ndarray | torch.Tensor | list[int], n: int) -> dict[int, np.ndarray]:
    """One boolean mask per class label, in sorted label order."""
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    return {int(c): y == c for c in np.unique(y)}


def class_vendi(features: Features, labels: np.ndarray | torch.Tensor | list[int], order: int = 1,
                kernel: Kernel = "cosine", sigma: float | None = None) -> dict:
    """Vendi score of the whole set and of each class, since the distilled set's diversity is meant within classes.

    Returns {"overall": float, "per_class": {label: float}, "class_mean": mean of the per-class scores}.
    """
    k = kernel_matrix(features, kernel, sigma)
    per_class = {c: float(np.exp(_renyi_entropy(k[m][:, m], order))) for c, m in _class_masks(labels, len(k)).items()}
    return {"overall": float(np.exp(_renyi_entropy(k, order))), "per_class": per_class,
            "class_mean": float(np.mean(list(per_class.values())))}


def renyi_mutual_information(features: Features, labels: np.ndarray | torch.Tensor | list[int], order: int = 2,
                             kernel: Kernel = "cosine", sigma: float | None = None) -> float:
    """Class-conditional Renyi mutual information I_alpha(X; C) = H_alpha(X) - sum_c p_c H_alpha(X | C = c), in nats.

    Why: it measures the within-class redundancy that the repulsion term (eq. 6) removes. The paper (Sec. 3.3,
    eq. 4) defines the class-conditional RMI I_alpha(X; Y | C) = E_{P_C}[I_alpha(X; Y | C = c)] between samples of
    a class, and its Theorem 1 states that minimising sum_{i,j in V} k(z_i, z_j) decreases the estimate
    hat I_alpha(X_{1:n} | C), whose estimator is left to its extended version. This is the kernel estimate of
    the project notes: H_alpha from the eigenvalues lambda of K/n (k(x, x) = 1, so they sum to 1), H_1 = -sum lambda
    log lambda, H_2 = -log ||K/n||_F^2 (no eigendecomposition); H_alpha(X | C = c) from the class block K_c / n_c
    and p_c = n_c / n. Smaller within-class kernel sums raise H_alpha(X | C = c) and so lower I_alpha. It is 0 when
    all classes hold the same points, and the entropy of p_c (log of the number of classes when they are equal in
    size) when each class is one point and the classes are orthogonal.
    """
    k = kernel_matrix(features, kernel, sigma)
    masks = _class_masks(labels, len(k))
    conditional = sum(m.mean() * _renyi_entropy(k[m][:, m], order) for m in masks.values())
    return float(_renyi_entropy(k, order) - conditional)


def feature_metrics(real: Features, fake: Features, k: int = 5, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 2020) -> dict[str, float]:
    """FID, KID (mean and std), precision, recall, density and coverage of fake against real, in one call."""
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"fid": fid(real, fake), "kid_mean": kid_mean, "kid_std": kid_std, **prdc(real, fake, k)}


@lru_cache(maxsize=2)
def _inception(path: str, device: str) -> torch.nn.Module:
    """torch-fidelity's Inception-v3, loaded once per weights file and device."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ImportError("Inception features need torch-fidelity: pip install 'torch-fidelity>=0.4,<0.5'") from None
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                       feature_extractor_weights_path=path).to(device)


@torch.no_grad()
def inception_features(images: torch.Tensor, weights_path: str | Path | None = None, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """Inception-v3 2048-d pool features (torch-fidelity's FID/KID layer) of (N, C, H, W) images in [0, 1].

    Only from a weights file on disk: weights_path, or torch-fidelity's file in the torch hub cache when None.
    Images are quantised to 8 bits as the export writes them (round(255 x)), so in-memory and exported images give
    the same features; one channel is repeated to RGB.
    """
    if weights_path is None:
        weights_path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file {path} is missing and is never downloaded here: pass weights_path=<local path>"
            f" to a copy of {INCEPTION_WEIGHTS} (torch-fidelity's release, {INCEPTION_URL})")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    model = _inception(str(path), str(device))
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size].detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        out.append(model(x.expand(-1, 3, -1, -1).to(device))[0].cpu())
    return torch.cat(out)
