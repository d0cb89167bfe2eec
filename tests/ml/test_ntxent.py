"""NT-Xent against a plain NumPy reference and its analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nmid_desktop.ml.ntxent import nt_xent_loss


def reference_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """Loop-by-loop NT-Xent as written in SimCLR (arXiv:2002.05709), Algorithm 1."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_matches_numpy_reference(t: float) -> None:
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
    got = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), temperature=t).item()
    assert got == pytest.approx(reference_nt_xent(z1, z2, t), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("t", [0.1, 1.0])
def test_all_embeddings_equal_gives_log_2n_minus_1(n: int, t: float) -> None:
    z = torch.ones(n, 4)
    assert nt_xent_loss(z, z.clone(), temperature=t).item() == pytest.approx(math.log(2 * n - 1), abs=1e-5)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_identical_views_of_orthogonal_samples(t: float) -> None:
    n = 5
    z = torch.eye(n, 8)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    # float32: the t = 0.1 value is 3.6e-4, so compare with an absolute tolerance too
    assert nt_xent_loss(z, z.clone(), temperature=t).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_is_symmetric_and_differentiable() -> None:
    torch.manual_seed(0)
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8)
    loss = nt_xent_loss(z1, z2)
    assert loss.item() == pytest.approx(nt_xent_loss(z2, z1).item(), rel=1e-6)
    loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        nt_xent_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        nt_xent_loss(torch.zeros(3, 4), torch.zeros(3, 4), temperature=0.0)
