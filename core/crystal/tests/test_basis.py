from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crystal.basis import bessel_basis, gaussian_expansion, polynomial_cutoff

D = torch.linspace(0.0, 9.0, 37, dtype=torch.float64)


def test_gaussian_cgcnn_defaults():
    out = gaussian_expansion(D)
    assert out.shape == (37, 41)
    mu = np.arange(0.0, 8.0 + 1e-9, 0.2)
    ref = np.exp(-((D.numpy()[:, None] - mu) ** 2) / 0.2**2)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    # value 1 on a centre
    assert gaussian_expansion(torch.tensor([1.0], dtype=torch.float64))[0, 5].item() == pytest.approx(1.0)


def test_gaussian_schnet():
    out = gaussian_expansion(D, 0.0, 30.0, step=0.1, gamma=10.0)
    assert out.shape == (37, 301)
    mu = np.linspace(0.0, 30.0, 301)
    np.testing.assert_allclose(out.numpy(), np.exp(-10.0 * (D.numpy()[:, None] - mu) ** 2), atol=1e-12)


def test_gaussian_num_and_width():
    d = torch.rand(4, 5, dtype=torch.float64)
    out = gaussian_expansion(d, 0.0, 5.0, num=11, width=0.7)
    assert out.shape == (4, 5, 11)
    ref = np.exp(-((d.numpy()[..., None] - np.linspace(0, 5, 11)) ** 2) / 0.49)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    with pytest.raises(ValueError):
        gaussian_expansion(d, num=None, step=None)


def test_bessel():
    c = 5.0
    d = torch.linspace(0.1, 5.0, 50, dtype=torch.float64)
    out = bessel_basis(d, c, 8)
    assert out.shape == (50, 8)
    n = np.arange(1, 9)
    ref = np.sqrt(2 / c) * np.sin(n * np.pi * d.numpy()[:, None] / c) / d.numpy()[:, None]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(out[-1].numpy(), 0.0, atol=1e-12)  # sin(nπ) = 0 at the cutoff
    zero = bessel_basis(torch.zeros(1, dtype=torch.float64), c, 8)
    np.testing.assert_allclose(zero[0].numpy(), math.sqrt(2 / c) * n * np.pi / c)
    near = bessel_basis(torch.full((1,), 1e-6, dtype=torch.float64), c, 8)
    np.testing.assert_allclose(zero.numpy(), near.numpy(), rtol=1e-6)
    # finite gradient at 0
    z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bessel_basis(z, c).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("p", [5, 6])
def test_polynomial_cutoff(p):
    c = 4.0
    d = torch.linspace(0.0, 5.0, 101, dtype=torch.float64)
    out = polynomial_cutoff(d, c, p)
    assert out.shape == (101,)
    x = d.numpy() / c
    ref = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    np.testing.assert_allclose(out.numpy(), np.where(x < 1, ref, 0.0), atol=1e-12)
    assert out[0].item() == 1.0
    assert (out[x >= 1] == 0).all()
    assert ((out >= 0) & (out <= 1)).all()
    # smooth at the cutoff: value, first and second derivatives vanish from the left
    t = torch.tensor([c - 1e-4], dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(polynomial_cutoff(t, c, p).sum(), t, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), t)
    assert abs(polynomial_cutoff(t, c, p).item()) < 1e-9
    assert abs(g1.item()) < 1e-6 and abs(g2.item()) < 1e-2
    assert polynomial_cutoff(torch.tensor([c], dtype=torch.float64), c, p).item() == 0.0


def test_dtype_and_shapes_float32():
    d = torch.rand(3, 7)
    assert gaussian_expansion(d).dtype == torch.float32
    assert bessel_basis(d, 5.0, 4).shape == (3, 7, 4)
    assert polynomial_cutoff(d, 5.0).shape == (3, 7)
