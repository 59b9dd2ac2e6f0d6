"""Metrics against their reference packages (torch-fidelity, prdc) and against cases worked out by hand."""
from __future__ import annotations

import contextlib
import io
import math
import sys

import numpy as np
import pytest
import torch

from adaptive_dd.evaluation import metrics
from adaptive_dd.evaluation.metrics import (class_vendi, feature_metrics, fid, inception_features, kernel_matrix,
                                            kid, prdc, renyi_mutual_information, vendi)

# (n_real, n_fake, d): n = 10 is IPC 1 of ten classes; several have n < d, i.e. singular covariances.
SHAPES = [(10, 10, 4), (10, 12, 32), (50, 40, 8), (200, 150, 64), (30, 20, 100)]


def _sets(n: int, m: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(0.3, 1.5, size=(m, d))


def _reference_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes
        return compute_prdc(real, fake, k)


@pytest.mark.parametrize("n,m,d", SHAPES)
def test_fid_matches_torch_fidelity(n, m, d):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    real, fake = _sets(n, m, d)
    ref = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(real)),
                                   fid_features_to_statistics(torch.from_numpy(fake)), False)
    # torch-fidelity's non-symmetric eigvals carry ~1e-8 relative round-off when a covariance is singular.
    assert fid(real, fake) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6 if min(n, m) <= d else 1e-12)


def test_fid_hand_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5))
    assert abs(fid(x, x)) < 1e-10
    # 1-D: {0, 2} has mean 1, unbiased variance 2; {3, 9} mean 6, variance 18: 5^2 + (sqrt 2 - sqrt 18)^2 = 25 + 8.
    assert fid(np.array([[0.0], [2.0]]), np.array([[3.0], [9.0]])) == pytest.approx(33.0, rel=1e-12)
    # Diagonal covariances commute: sum of (sigma_r - sigma_f)^2 per axis plus the squared mean shift.
    real = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # var 2/3, 8/3
    fake = real * np.array([3.0, 0.5]) + np.array([1.0, 1.0])  # var 6, 2/3
    expected = 2 + (math.sqrt(2 / 3) - math.sqrt(6)) ** 2 + (math.sqrt(8 / 3) - math.sqrt(2 / 3)) ** 2
    assert fid(real, fake) == pytest.approx(expected, rel=1e-12)
    # Singular covariances (2 points in 3-D): a translated copy is at the squared shift.
    pts = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    assert fid(pts, pts + np.array([1.0, 2.0, -2.0])) == pytest.approx(9.0, rel=1e-12)


def test_fid_inputs():
    real, fake = _sets(12, 10, 6)
    assert fid(torch.from_numpy(real).float(), torch.from_numpy(fake)) == pytest.approx(
        fid(real.astype(np.float32), fake), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        fid(real, fake[:1])
    with pytest.raises(ValueError, match="dimension"):
        fid(real, fake[:, :5])


@pytest.mark.parametrize("n,m,d,subset_size", [(10, 10, 4, 10), (10, 12, 32, 10), (50, 40, 8, 25),
                                               (200, 150, 64, 100), (30, 20, 100, 7)])
def test_kid_matches_torch_fidelity(n, m, d, subset_size):
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, fake = _sets(n, m, d)
    ref = kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=20,
                                 kid_subset_size=subset_size, rng_seed=3, verbose=False)
    mean, std = kid(real, fake, subsets=20, subset_size=subset_size, seed=3)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-12, abs=1e-14)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-10, abs=1e-14)


def test_kid_subset_size_is_clipped_to_the_smaller_set():
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, fake = _sets(40, 10, 16)
    with pytest.raises(ValueError, match="subset size"):  # torch-fidelity refuses sets smaller than the subset
        kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subset_size=1000, verbose=False)
    ref = kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=100,
                                 kid_subset_size=10, verbose=False)
    mean, std = kid(real, fake)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-12)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-10)
    assert kid(real[:10], fake)[1] == pytest.approx(0.0, abs=1e-15)  # every subset is both whole sets


def test_kid_hand_cases():
    # Linear kernel: sum_{i != j} x_i x_j / (s (s - 1)) twice, minus 2 sum x_i y_j / s^2.
    lin = {"degree": 1, "gamma": 1.0, "coef0": 0.0, "subsets": 3}
    assert kid([[1.0], [3.0]], [[0.0], [0.0]], **lin) == pytest.approx((3.0, 0.0))
    assert kid([[1.0], [-1.0]], [[2.0], [2.0]], **lin) == pytest.approx((-1.0 + 4.0 - 0.0, 0.0))
    # Cubic kernel, gamma = 1/d: points 0 and 1 against 1 and 1 in 1-D; k = (x y + 1)^3.
    # k_rr(0, 1) = 1, k_ff(1, 1) = 8, cross = 1 + 1 + 8 + 8 = 18: (2 + 16) / 2 - 2 * 18 / 4 = 0.
    assert kid([[0.0], [1.0]], [[1.0], [1.0]], subsets=2) == pytest.approx((0.0, 0.0))
    assert kid([[0.0], [2.0]], [[1.0], [1.0]], subsets=2) == pytest.approx(((2 + 16) / 2 - 2 * (2 + 54) / 4, 0.0))


@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("k", [5, 3])
def test_prdc_matches_reference(n, m, d, k):
    real, fake = _sets(n, m, d)
    ref = _reference_prdc(real, fake, k)
    ours = prdc(real, fake, k)
    assert ours == {key: pytest.approx(float(ref[key]), abs=1e-12) for key in ref}


def test_prdc_hand_placed():
    # 1-D, k = 1. Real 0.45, 1, 10, 11 have radii .55, .55, 1, 1; fake .4, .6, 50, 50.5 have radii .2, .2, .5, .5.
    # Real balls: 0.45's holds .4 and .6, 1's holds .6; 10 and 11 hold none. Fake balls: .4's holds 0.45.
    real = np.array([[0.45], [1.0], [10.0], [11.0]])
    fake = np.array([[0.4], [0.6], [50.0], [50.5]])
    expected = {"precision": 0.5, "recall": 0.25, "density": 0.75, "coverage": 0.5}
    assert prdc(real, fake, k=1) == pytest.approx(expected)
    assert {key: float(v) for key, v in _reference_prdc(real, fake, 1).items()} == pytest.approx(expected)
    # Balls are open: real 0, 1, 2 and fake 3, 4, 5 all have radius 1, and 2 and 3 are exactly 1 apart.
    real, fake = np.array([[0.0], [1.0], [2.0]]), np.array([[3.0], [4.0], [5.0]])
    ties = prdc(real, fake, k=1)
    assert ties == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert ties == {key: float(v) for key, v in _reference_prdc(real, fake, 1).items()}
    # k + 1 points per set suffice (prdc 0.2 itself needs k + 2: np.argpartition at index k + 1). With k = 2 the
    # radii are 2, 1, 2 in both sets: only real 2 and fake 3 hold each other (fake 4 sits on real 2's radius).
    assert prdc(real, fake, k=2) == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "density": 1 / 6,
                                                   "coverage": 1 / 3})
    with pytest.raises(ValueError, match="at least 6"):
        prdc(real, fake)


def test_vendi_hand_cases():
    rng = np.random.default_rng(2)
    same = np.tile(rng.normal(size=(1, 6)), (5, 1)) * rng.uniform(0.5, 2.0, size=(5, 1))  # cosine ignores scale
    orthogonal = np.eye(7)[:5] * 3.0
    for order in (1, 2):
        assert vendi(same, order) == pytest.approx(1.0, rel=1e-12)
        assert vendi(orthogonal, order) == pytest.approx(5.0, rel=1e-12)
    # Two unit vectors at cosine c = 0.5: K/2 has eigenvalues 3/4 and 1/4.
    pair = np.array([[1.0, 0.0], [0.5, math.sqrt(0.75)]])
    assert vendi(pair, 2) == pytest.approx(1 / (0.75 ** 2 + 0.25 ** 2), rel=1e-12)  # = 2 / (1 + c^2) = 1.6
    assert vendi(pair, 1) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-12)
    # RBF: two points at distance 2 with sigma 2 have k = exp(-1/2).
    c = math.exp(-0.5)
    assert vendi([[0.0], [2.0]], 2, kernel="rbf", sigma=2.0) == pytest.approx(2 / (1 + c ** 2), rel=1e-12)


def test_vendi_order_2_is_the_eigenvalue_formula():
    x = np.random.default_rng(3).normal(size=(12, 20))
    lam = np.linalg.eigvalsh(kernel_matrix(x) / 12)
    assert vendi(x, 2) == pytest.approx(1 / (lam ** 2).sum(), rel=1e-10)
    assert 1.0 < vendi(x, 2) <= vendi(x, 1) < 12.0  # order-2 entropy never exceeds Shannon's


def test_kernel_matrix_errors():
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        kernel_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="sigma"):
        kernel_matrix(np.eye(2), "rbf")
    with pytest.raises(ValueError, match="order"):
        vendi(np.eye(2), 3)


def test_class_vendi():
    # Class 0: three copies of e1; class 1: e2 and e3. K/5 has eigenvalues 3/5, 1/5, 1/5.
    x = np.array([[1.0, 0, 0], [2.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    lam = np.array([0.6, 0.2, 0.2])
    for order, overall in ((1, math.exp(-(lam * np.log(lam)).sum())), (2, 1 / (lam ** 2).sum())):
        out = class_vendi(x, labels, order)
        assert out["overall"] == pytest.approx(overall, rel=1e-12)
        assert out["per_class"] == pytest.approx({0: 1.0, 1: 2.0}, rel=1e-12)
        assert out["class_mean"] == pytest.approx(1.5, rel=1e-12)
    with pytest.raises(ValueError, match="labels"):
        class_vendi(x, [0, 1])


@pytest.mark.parametrize("order", [1, 2])
def test_renyi_mutual_information_hand_cases(order):
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(4, 6))
    copies, labels = np.concatenate([pts] * 3), np.repeat([0, 1, 2], 4)
    assert renyi_mutual_information(copies, labels, order) == pytest.approx(0.0, abs=1e-10)
    assert renyi_mutual_information(copies, labels, order, kernel="rbf", sigma=1.5) == pytest.approx(0.0, abs=1e-10)
    # Orthogonal classes, each one point repeated: I = Renyi entropy of p_C (log 3 for equal sizes).
    clusters = np.repeat(np.eye(5)[:3] * 2.0, 4, axis=0)
    assert renyi_mutual_information(clusters, labels, order) == pytest.approx(math.log(3), rel=1e-12)
    sizes = np.array([1, 3])
    p = sizes / sizes.sum()
    expected = -(p * np.log(p)).sum() if order == 1 else -math.log((p ** 2).sum())
    assert renyi_mutual_information(np.repeat(np.eye(2), sizes, axis=0), np.repeat([0, 1], sizes),
                                    order) == pytest.approx(expected, rel=1e-12)


def test_renyi_mutual_information_falls_as_classes_spread():
    """The reason for eq. 6: more spread within classes (smaller within-class kernel sums) means lower I(X; C)."""
    rng = np.random.default_rng(5)
    centres, noise = np.repeat(np.eye(16)[:4] * 4.0, 10, axis=0), rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(4), 10)
    rmi = [renyi_mutual_information(centres + s * noise, labels) for s in (0.1, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(rmi) < 0)
    assert rmi[0] < math.log(4)


def test_feature_metrics_collects_all():
    real, fake = _sets(30, 20, 8)
    out = feature_metrics(real, fake, kid_subsets=10)
    assert out == {"fid": fid(real, fake), "kid_mean": kid(real, fake, subsets=10)[0],
                   "kid_std": kid(real, fake, subsets=10)[1], **prdc(real, fake)}


def test_inception_features_never_download(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    images = torch.rand(2, 3, 16, 16)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*weights_path="):
        inception_features(images, missing)
    with pytest.raises(FileNotFoundError, match=metrics.INCEPTION_WEIGHTS):
        inception_features(images)
    present = tmp_path / "present.pth"
    present.touch()
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install 'torch-fidelity"):
        inception_features(images, present)


def test_inception_features_from_a_local_file(tmp_path):
    """Random weights saved in torch-fidelity's format: our call is its extractor on round(255 x) RGB uint8."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    path = tmp_path / metrics.INCEPTION_WEIGHTS
    torch.save(model.state_dict(), path)
    gray = torch.rand(2, 1, 20, 20)
    feats = inception_features(gray, path, batch_size=1)
    assert feats.shape == (2, 2048)
    expected = model((gray * 255).round().to(torch.uint8).expand(-1, 3, -1, -1))[0]
    assert torch.equal(feats, expected)
    assert torch.equal(inception_features(gray.expand(-1, 3, -1, -1), str(path)), feats)
