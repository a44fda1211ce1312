"""Parity of one predictor-corrector time point with the reference sampler (``tests/golden_steps``).

``golden_steps/make_golden_steps.py`` ran MatterGen's own ``GuidedPredictorCorrector`` (mattergen
1.0.3) with an analytic stand-in denoiser on fixed noisy crystals and recorded every random draw;
here the same inputs and draws go through :class:`~crystal_mattergen.diffusion.PredictorCorrector`
and :class:`~crystal_mattergen.sampler.GuidedScore`. Cases: time points 0, 400, 998 and 999 of
1000 (the last one has no noise), guidance scales 2 and 0. Measured on this machine: all
outputs bit-identical to the reference (float32, CPU). Tolerances kept for other platforms
(BLAS/SVD differences): fractional coordinates 1e-5 (periodic difference), lattices 5e-5 Å,
atom types exactly equal. The training cases (forward corruption + ``MaterialsLoss``) measured
bit-identical noisy states and losses within 9.4e-7 relative; tolerance 1e-5 relative.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crystal_mattergen.diffusion import PredictorCorrector, ReplayNoise, State
from crystal_mattergen.sampler import GuidedScore

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent / "golden_steps"
NPZ = HERE / "golden_steps.npz"
pytestmark = pytest.mark.skipif(not NPZ.exists(), reason="golden_steps.npz not generated")


def _maker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_golden_steps", HERE / "make_golden_steps.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _cases() -> list[int]:
    if not NPZ.exists():
        return []
    return list(range(len(json.loads((HERE / "golden_steps.json").read_text())["cases"])))


@pytest.mark.parametrize("case", _cases())
def test_one_reverse_step_matches_the_reference(case: int) -> None:
    mk = _maker()
    data = np.load(NPZ)
    k = {name: torch.from_numpy(data[f"const_{name}"]) for name in ("A", "Bmat", "v", "W")}
    meta = json.loads((HERE / "golden_steps.json").read_text())["cases"][case]
    state = State(
        torch.from_numpy(data["in_pos"]),
        torch.from_numpy(data["in_cell"]),
        torch.from_numpy(data["in_atomic_numbers"]).long(),
        torch.from_numpy(data["in_num_atoms"]).long(),
    )
    gaps = torch.from_numpy(data["in_band_gap"])

    def denoiser(s: State, t: torch.Tensor, cond: dict | None) -> dict[str, torch.Tensor]:
        gap = None if cond is None else cond["dft_band_gap"]
        p, c, logits = mk.stub_outputs(s.pos, s.cell, s.atomic_numbers, s.num_atoms, s.batch, t, gap, k)
        return {"pos": p, "cell": c, "atomic_numbers": logits}

    p = f"c{case}_"
    noise = ReplayNoise(
        {
            "corrector.pos": torch.from_numpy(data[p + "noise_corrector_pos"]),
            "corrector.cell": torch.from_numpy(data[p + "noise_corrector_cell"]),
            "predictor.pos": torch.from_numpy(data[p + "noise_predictor_pos"]),
            "predictor.cell": torch.from_numpy(data[p + "noise_predictor_cell"]),
            "predictor.atomic_numbers": torch.from_numpy(data[p + "noise_predictor_atomic_numbers"]),
        }
    )
    pc = PredictorCorrector()
    timesteps, dt = pc.time_grid()
    t = torch.full((3,), float(timesteps[meta["i"]]))
    assert torch.equal(t, torch.from_numpy(data[p + "t"])) and torch.equal(dt, torch.from_numpy(data[p + "dt"]))
    score = GuidedScore(denoiser, {"dft_band_gap": gaps}, meta["guidance_scale"])
    sample, mean = pc.step(state, t, dt, score, noise)
    for name, ours in (("sample", sample), ("mean", mean)):
        d = np.abs(ours.pos.numpy() - data[p + f"{name}_pos"])
        assert np.minimum(d, 1 - d).max() < 1e-5  # periodic difference of wrapped coordinates
        np.testing.assert_allclose(ours.cell.numpy(), data[p + f"{name}_cell"], atol=5e-5, rtol=0)
        np.testing.assert_array_equal(ours.atomic_numbers.numpy(), data[p + f"{name}_atomic_numbers"])
    if meta["guidance_scale"] == 0.0:  # one denoiser evaluation per call, no mixing: bit-identical
        assert np.array_equal(mean.cell.numpy(), data[p + "mean_cell"])


def _loss_cases() -> list[int]:
    if not NPZ.exists():
        return []
    return list(range(len(json.loads((HERE / "golden_steps.json").read_text()).get("loss_cases", []))))


@pytest.mark.parametrize("case", _loss_cases())
def test_forward_corruption_and_loss_match_the_reference(case: int) -> None:
    """The reference's ``MultiCorruption.sample_marginal`` + ``MaterialsLoss`` with the same draws."""
    from crystal_mattergen.diffusion import Corruption

    mk = _maker()
    data = np.load(NPZ)
    k = {name: torch.from_numpy(data[f"const_{name}"]) for name in ("A", "Bmat", "v", "W")}
    types = torch.from_numpy(data["in_atomic_numbers"]).long()
    types[types == 101] = 8
    x0 = State(
        torch.from_numpy(data["in_pos"]),
        torch.from_numpy(data["in_cell"]),
        types,
        torch.from_numpy(data["in_num_atoms"]).long(),
    )
    q = f"loss{case}_"
    t = torch.from_numpy(data[q + "t"])
    noise = ReplayNoise(
        {
            "train.pos": torch.from_numpy(data[q + "noise_pos"]),
            "train.cell": torch.from_numpy(data[q + "noise_cell"]),
            "train.atomic_numbers": torch.from_numpy(data[q + "noise_atomic_numbers"]),
        }
    )
    corr = Corruption()
    noisy, aux = corr.corrupt(x0, t, noise)
    np.testing.assert_allclose(noisy.pos.numpy(), data[q + "noisy_pos"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(noisy.cell.numpy(), data[q + "noisy_cell"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(noisy.atomic_numbers.numpy(), data[q + "noisy_atomic_numbers"])
    p, c, logits = mk.stub_outputs(
        noisy.pos, noisy.cell, noisy.atomic_numbers, noisy.num_atoms, noisy.batch, t, None, k
    )
    logits[:, 100] = logits[:, 100] + 1e10
    losses = corr.losses(x0, noisy, t, {"pos": p, "cell": c, "atomic_numbers": logits}, aux)
    for ours, ref in (("loss", "loss"), ("loss_pos", "metric_pos"), ("loss_cell", "metric_cell")):
        assert float(losses[ours]) == pytest.approx(float(data[q + ref]), rel=1e-5), ours
    assert float(losses["loss_atomic_numbers"]) == pytest.approx(float(data[q + "metric_atomic_numbers"]), rel=1e-5)
