"""Tests of MatterGen's corruption processes, sampler and guidance (CPU, one thread, < 10 s).

Closed-form checks (float64 where it matters): the lattice VP-SDE marginals and the ancestral
predictor's posterior mean (1e-10), the wrapped-normal score against finite differences of its
log-density (1e-6), the absorbing D3PM posterior against brute-force Bayes with explicit
transition matrices (1e-6), and whole sampling runs with an exact ("oracle") denoiser for a
point-mass data distribution, which must return that crystal.
"""

from __future__ import annotations

import math

import pytest
import torch
from mattergen_oracle import PEROVSKITE_A, PEROVSKITE_FRAC, PEROVSKITE_Z, OracleDenoiser

from crystal_mattergen.diffusion import (
    MASK_INDEX,
    NUM_CLASSES,
    Corruption,
    DiffusionConfig,
    GeneratorNoise,
    Guided,
    LatticeVPSDE,
    MaskDiffusion,
    PredictorCorrector,
    ReplayNoise,
    State,
    polar_symmetric,
    symmetric_noise,
    wrapped_normal_score,
)
from crystal_mattergen.model import MatterGenModel
from crystal_mattergen.sampler import GuidedScore

torch.set_num_threads(1)


def test_symmetric_noise_keeps_unit_variance() -> None:
    z = symmetric_noise(torch.randn(20000, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert torch.equal(z, z.transpose(1, 2))
    assert torch.allclose(z.var(0), torch.ones(3, 3, dtype=torch.float64), atol=0.05)


def test_polar_symmetric() -> None:
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(5, 3, 3, generator=g, dtype=torch.float64) + 4 * torch.eye(3, dtype=torch.float64)
    p = polar_symmetric(lat)
    assert torch.allclose(p, p.transpose(1, 2), atol=1e-12)
    assert torch.allclose(p @ p, lat @ lat.transpose(1, 2), atol=1e-10)  # same metric: L = P U


def test_lattice_sde_limits() -> None:
    sde = LatticeVPSDE(limit_density=0.05)
    n = torch.tensor([1, 8, 20])
    x0 = torch.randn(3, 3, 3, dtype=torch.float64)
    mean, std = sde.marginal(x0, torch.zeros(3, dtype=torch.float64), n)
    assert torch.allclose(mean, x0) and torch.all(std == 0)
    mean, std = sde.marginal(x0, torch.ones(3, dtype=torch.float64), n)
    mu = (n.double() / 0.05) ** (1 / 3)
    assert torch.allclose(mean, mu[:, None, None] * torch.eye(3, dtype=torch.float64), atol=0.01 * mu.max())
    var = 0.25 * n.double() ** (2 / 3)
    assert torch.allclose(std**2, var[:, None, None].expand(3, 3, 3), rtol=1e-3)
    # alpha(t) = exp(-int beta / 2) with beta linear from 0.1 to 20
    t = torch.tensor([0.3], dtype=torch.float64)
    integral = 0.1 * 0.3 + 0.5 * (20 - 0.1) * 0.3**2
    assert math.isclose(float(sde.mean_coeff(t)), math.exp(-0.5 * integral), rel_tol=1e-12)


def test_wrapped_normal_score_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, generator=g, dtype=torch.float64)
    mu = torch.rand(6, 3, generator=g, dtype=torch.float64)
    var = torch.tensor([0.01, 0.05, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64)

    def logp(y: torch.Tensor) -> torch.Tensor:
        r = torch.arange(-6, 7, dtype=torch.float64)
        k = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        d2 = ((y - mu)[:, None] + k[None]).pow(2).sum(-1)
        return torch.logsumexp(-d2 / (2 * var[:, None]), -1)

    h = 1e-6
    fd = torch.stack(
        [
            (logp(x + h * torch.eye(3, dtype=torch.float64)[i]) - logp(x - h * torch.eye(3, dtype=torch.float64)[i]))
            / (2 * h)
            for i in range(3)
        ],
        -1,
    )
    assert torch.allclose(wrapped_normal_score(x, mu, var, max_offset=6), fd, atol=1e-6, rtol=1e-6)
    # the default truncation (3 images each way, as the reference) is exact for the small variances
    assert torch.allclose(wrapped_normal_score(x[:3], mu[:3], var[:3]), fd[:3], atol=1e-6, rtol=1e-6)


def test_mask_diffusion_schedule_and_posterior() -> None:
    n, dim = 10, 5
    d = MaskDiffusion(num_steps=n, dim=dim)
    k = torch.arange(n + 1)
    assert torch.allclose(d.keep, (n - k).float() / n, atol=1e-6)

    # explicit one-step matrices Q_k[i, j] = q(x_{k+1} = j | x_k = i)
    def q_step(step: int) -> torch.Tensor:
        beta = 1 / (n - step)
        q = (1 - beta) * torch.eye(dim, dtype=torch.float64)
        q[:, dim - 1] += beta
        q[dim - 1] = 0
        q[dim - 1, dim - 1] = 1
        return q

    cum = [torch.eye(dim, dtype=torch.float64)]
    for step in range(n):
        cum.append(cum[-1] @ q_step(step))
    probs = torch.softmax(torch.randn(3, dim, generator=torch.Generator().manual_seed(3)), -1)
    probs[:, -1] = 0
    probs = probs / probs.sum(-1, keepdim=True)
    for step in (0, 3, 8):
        t = torch.full((3,), step)
        got = d.qt_given_q0(probs, t).double()
        assert torch.allclose(got, probs.double() @ cum[step], atol=1e-6)
        for x_next in (1, dim - 1):
            xn = torch.full((3,), x_next)
            post = torch.softmax(d.posterior_logits(probs, t, xn).double(), -1)
            brute = (probs.double() @ cum[step]) * q_step(step)[:, x_next][None]
            brute = brute / brute.sum(-1, keepdim=True)
            assert torch.allclose(post, brute, atol=1e-6)
        # multi-level jump: q(x_step | x_{step+2}, x0)
        xn = torch.full((3,), dim - 1)
        two = q_step(step) @ q_step(step + 1) if step + 1 < n else None
        if two is not None:
            post = torch.softmax(d.posterior_logits(probs, t, xn, t_next=t + 2).double(), -1)
            brute = (probs.double() @ cum[step]) * two[:, dim - 1][None]
            assert torch.allclose(post, brute / brute.sum(-1, keepdim=True), atol=1e-6)


def test_lattice_predictor_is_the_ddpm_posterior_mean() -> None:
    """With the exact score of a point mass, the predictor mean is E[x_s | x_t, x_0]."""
    pc = PredictorCorrector()
    sde = pc.lattice
    n = torch.tensor([4, 9])
    x0 = torch.tensor([[3.0, 0.2, 0.1], [0.2, 4.0, 0.0], [0.1, 0.0, 5.0]], dtype=torch.float64).expand(2, 3, 3)
    t = torch.tensor([0.6, 0.6], dtype=torch.float64)
    dt = torch.tensor(-0.01, dtype=torch.float64)
    m_t, s_t = sde.marginal(x0, t, n)
    xt = m_t + s_t * symmetric_noise(
        torch.randn(2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    )
    score = -(xt - m_t) / s_t**2
    nb = len(n)
    state = State(torch.zeros(13, 3, dtype=torch.float64), xt, torch.full((13,), 101), n)
    sc = {
        "pos": torch.zeros(13, 3, dtype=torch.float64),
        "cell": score,
        "atomic_numbers": torch.zeros(13, NUM_CLASSES, dtype=torch.float64),
    }
    _, mean = pc.predict(state, t, dt, sc, GeneratorNoise(torch.Generator().manual_seed(0)))
    mu = sde.limit_mean(n, x0)
    a_t, a_s = sde.mean_coeff(t)[:, None, None], sde.mean_coeff(t + dt)[:, None, None]
    var = sde.limit_var(n, x0)
    a_ts = a_t / a_s
    s2_t, s2_s = (1 - a_t**2) * var, (1 - a_s**2) * var
    s2_ts = s2_t - a_ts**2 * s2_s
    expect = mu + (a_s * s2_ts / s2_t) * (x0 - mu) + (a_ts * s2_s / s2_t) * (xt - mu)
    assert nb == 2 and torch.allclose(mean.cell, expect, atol=1e-10)


@pytest.mark.parametrize("steps", [pytest.param(1000, marks=pytest.mark.slow), 40])
def test_sampling_with_exact_denoiser_returns_the_crystal(steps: int) -> None:
    oracle = OracleDenoiser()
    model = MatterGenModel(oracle, kind="toy")
    pc = PredictorCorrector(model.diffusion, steps=steps)
    n = torch.tensor([5, 5])
    out = pc.sample(n, lambda s, t: model.raw(s, t, None), GeneratorNoise(torch.Generator().manual_seed(5)))
    assert torch.equal(out.atomic_numbers, PEROVSKITE_Z.repeat(2))
    d = torch.remainder(out.pos - PEROVSKITE_FRAC.repeat(2, 1) + 0.5, 1.0) - 0.5
    assert d.abs().max() < 0.02
    # the lattice ends symmetric and close to the cubic cell
    assert torch.allclose(out.cell, PEROVSKITE_A * torch.eye(3).expand(2, 3, 3), atol=0.1)


def test_replay_noise_makes_a_step_deterministic() -> None:
    model = MatterGenModel(OracleDenoiser(), kind="toy")
    pc = PredictorCorrector(model.diffusion)
    n = torch.tensor([5])
    state = pc.prior(n, GeneratorNoise(torch.Generator().manual_seed(6)))
    g = torch.Generator().manual_seed(7)
    noise = {
        "corrector.pos": torch.randn(5, 3, generator=g),
        "corrector.cell": torch.randn(1, 3, 3, generator=g),
        "predictor.pos": torch.randn(5, 3, generator=g),
        "predictor.cell": torch.randn(1, 1, 1, generator=g),
        "predictor.atomic_numbers": torch.rand(5, NUM_CLASSES, generator=g),
    }
    t = torch.tensor([0.5])
    dt = torch.tensor(-0.001)
    a = pc.step(state, t, dt, lambda s, tt: model.raw(s, tt, None), ReplayNoise(noise))
    b = pc.step(state, t, dt, lambda s, tt: model.raw(s, tt, None), ReplayNoise(noise))
    assert torch.equal(a[0].pos, b[0].pos) and torch.equal(a[0].cell, b[0].cell)
    assert torch.allclose(a[1].cell, a[1].cell.transpose(1, 2), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        ReplayNoise({"x": torch.zeros(2)}).normal("x", (3,), torch.zeros(1))


def test_guidance_mixes_outputs_as_the_reference() -> None:
    calls: list[object] = []

    def den(state: State, t: torch.Tensor, cond: dict | None) -> dict[str, torch.Tensor]:
        calls.append(cond)
        v = 0.0 if cond is None else 1.0
        return {k: torch.full((2,), v + i) for i, k in enumerate(("pos", "cell", "atomic_numbers"))}

    s = State(torch.zeros(1, 3), torch.eye(3)[None], torch.ones(1, dtype=torch.long), torch.tensor([1]))
    t = torch.tensor([0.5])
    assert GuidedScore(den, {"dft_band_gap": [1.0]}, 0.0)(s, t)["pos"][0] == 0.0 and calls == [None]
    calls.clear()
    assert GuidedScore(den, {"dft_band_gap": [1.0]}, 1.0)(s, t)["pos"][0] == 1.0 and len(calls) == 1
    calls.clear()
    g = GuidedScore(den, {"dft_band_gap": [1.0]}, 2.0)
    out = g.mixed_outputs(s, t)
    assert out["pos"][0] == 2.0 and out["cell"][0] == 3.0 and g.evaluations == 2  # uncond + 2 (cond - uncond)
    pair = g(s, t)
    assert isinstance(pair, Guided) and pair.factor == 2.0
    # the sampler mixes scores: (uncond/σ) + 2 (cond/σ - uncond/σ)
    pc = PredictorCorrector()
    st = State(torch.full((2, 3), 0.1), 4 * torch.eye(3)[None], torch.ones(2, dtype=torch.long), torch.tensor([2]))
    tt = torch.tensor([0.5])

    def den2(state: State, t: torch.Tensor, cond: dict | None) -> dict[str, torch.Tensor]:
        v = 0.0 if cond is None else 1.0
        return {
            "pos": torch.full((2, 3), v),
            "cell": torch.full((1, 3, 3), v),
            "atomic_numbers": torch.full((2, 101), v),
        }

    mixed = pc.scores(st, tt, GuidedScore(den2, {"x": [1]}, 2.0)(st, tt))
    sigma = pc.pos.std(tt, st.num_atoms, st.batch)
    assert torch.allclose(mixed["pos"], 2.0 / sigma.expand(2, 3)) and torch.all(mixed["atomic_numbers"] == 2.0)
    assert GuidedScore(den, None, 2.0)(s, t)["pos"][0] == 0.0


def test_training_losses_vanish_for_the_exact_denoiser() -> None:
    corr = Corruption(DiffusionConfig())
    n = torch.tensor([5, 5, 5])
    x0 = State(
        PEROVSKITE_FRAC.repeat(3, 1), PEROVSKITE_A * torch.eye(3).expand(3, 3, 3).clone(), PEROVSKITE_Z.repeat(3), n
    )
    t = torch.tensor([0.05, 0.4, 0.9])
    noisy, aux = corr.corrupt(x0, t, GeneratorNoise(torch.Generator().manual_seed(8)))
    assert int((noisy.atomic_numbers == MASK_INDEX + 1).sum()) > 0
    oracle = OracleDenoiser()
    o = oracle(noisy.pos, noisy.cell, noisy.atomic_numbers, n, noisy.batch, t)
    out = {"pos": o.frac_score, "cell": o.lattice_score, "atomic_numbers": o.type_logits}
    losses = corr.losses(x0, noisy, t, out, aux)
    assert losses["loss_cell"] < 1e-8 and losses["loss_pos"] < 1e-8
    assert losses["loss_atomic_numbers"] < 1e-3
    bad = corr.losses(x0, noisy, t, {k: torch.zeros_like(v) for k, v in out.items()}, aux)
    assert bad["loss"] > 1.0
