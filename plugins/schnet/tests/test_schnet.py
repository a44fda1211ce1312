"""Tests of the crystal-schnet encoder (CPU; about 10 s on 2 cores).

Small models (set through the config) keep the file fast. The network's last layer starts
at zero (as in the original code), which would make every invariance trivially true, so
:func:`_encoder` fills all-zero parameters with random values first.

The reference test recomputes SchNet with explicit loops over pymatgen's periodic
neighbour list (an independent neighbour search) and the paper's formulas, with the same
weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from crystal import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.testing import permute, random_rotation, rotate, supercell, translate, unimodular_recell
from crystal.testing.contracts import check_plugin, sample_batch
from crystal_schnet.encoder import SchNetEncoder
from crystal_schnet.layers import cosine_cutoff, shifted_softplus

torch.set_num_threads(1)

SMALL: dict[str, Any] = {"n_features": 16, "n_filters": 12, "n_interactions": 2, "num_gaussians": 20}
MIXED_TARGETS = (
    {"name": "e", "unit": "eV/atom"},
    {"name": "q", "level": "atom"},
)
TOL = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


def _encoder(dtype: torch.dtype = torch.float32, **config: Any) -> SchNetEncoder:
    """A small SchNet whose all-zero parameters (output layers, biases) are made random."""
    enc = SchNetEncoder(device="cpu", **{**SMALL, **config})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in enc.net.parameters():
            if not bool(p.any()):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    if dtype == torch.float64:
        enc.net.double()
    return enc


def _structures(*names: str):
    from pymatgen.util.testing import PymatgenTest

    return [PymatgenTest.get_structure(n) for n in names]


@pytest.fixture(scope="module")
def batch() -> CrystalBatch:
    """Rattled Si, NaCl, Cu (2 atoms) plus rattled SrTiO3 (5 atoms, three species)."""
    sto = _structures("SrTiO3")[0].copy()
    sto.perturb(0.05, min_distance=0.01)
    return CrystalBatch.concat([sample_batch(), CrystalBatch.from_structures([sto], ids=["SrTiO3"])])


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def _supercell_index(batch: CrystalBatch, reps: tuple[int, int, int]) -> torch.Tensor:
    """Atom of the original batch behind every atom of ``supercell(batch, reps)``."""
    m = math.prod(reps)
    return torch.cat(
        [torch.arange(int(n)).repeat(m) + int(p) for n, p in zip(batch.num_atoms, batch.ptr[:-1], strict=True)]
    )


# ----------------------------------------------------------------------------- contract
def test_contract() -> None:
    enc = check_plugin("encoder", "schnet")
    assert isinstance(enc, SchNetEncoder) and enc.config.n_interactions == 6


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_invariances(batch: CrystalBatch, dtype: torch.dtype) -> None:
    """Structure (mean readout) and atom outputs under rotation, translation, permutation,
    2x1x1 and 2x2x2 supercells and a skewed unimodular re-cell."""
    enc = _encoder(dtype, targets=MIXED_TARGETS)
    ref = enc.predict(batch)
    assert ref["e"].dtype == dtype and ref["e"].shape == (4,) and ref["q"].shape == (batch.num_nodes,)
    assert ref["e"].std() > 1e-3 and ref["q"].std() > 1e-3  # not trivially constant

    R = random_rotation(torch.Generator().manual_seed(3))
    same_order = {
        "rotation": rotate(batch, R),
        "translation": translate(batch, torch.tensor([0.3, -1.7, 2.2])),
        "unimodular re-cell": unimodular_recell(batch),
    }
    for what, other in same_order.items():
        out = enc.predict(other)
        _close(out["e"], ref["e"], dtype, f"e under {what}")
        _close(out["q"], ref["q"], dtype, f"q under {what}")

    permuted, order = permute(batch, torch.Generator().manual_seed(4))
    out = enc.predict(permuted)
    _close(out["e"], ref["e"], dtype, "e under permutation")
    _close(out["q"], ref["q"][order], dtype, "q under permutation")

    for reps in ((2, 1, 1), (2, 2, 2)):
        out = enc.predict(supercell(batch, reps))
        _close(out["e"], ref["e"], dtype, f"e (mean readout) under a {reps} supercell")
        _close(out["q"], ref["q"][_supercell_index(batch, reps)], dtype, f"q under a {reps} supercell")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_sum_readout_is_extensive(batch: CrystalBatch, dtype: torch.dtype) -> None:
    enc = _encoder(dtype, readout="sum", targets=({"name": "E", "unit": "eV", "normalize": False},))
    ref = enc.predict(batch)["E"]
    for reps in ((2, 1, 1), (2, 2, 2)):
        _close(enc.predict(supercell(batch, reps))["E"], math.prod(reps) * ref, dtype, f"E under a {reps} supercell")
    _close(enc.predict(unimodular_recell(batch))["E"], ref, dtype, "E under a unimodular re-cell")
    # mean and sum readout differ exactly by the number of atoms (normalisation off)
    mean = _encoder(dtype, readout="mean", targets=({"name": "E", "normalize": False},)).predict(batch)["E"]
    _close(mean * batch.num_atoms.to(dtype), ref, dtype, "sum = N x mean")


# ---------------------------------------------------------------- independent reference
def _reference_predict(enc: SchNetEncoder, structure) -> tuple[float, list[float]]:
    """SchNet by explicit loops over pymatgen's neighbour list, in float64 numpy."""
    model = enc.net.model
    P = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    cfg = enc.config

    def ssp(x: np.ndarray) -> np.ndarray:
        return np.log(0.5 * np.exp(x) + 0.5)  # the paper's formula

    def dense(x: np.ndarray, name: str, bias: bool = True) -> np.ndarray:
        y = P[f"{name}.weight"] @ x
        return y + P[f"{name}.bias"] if bias else y

    mu = np.linspace(0.0, cfg.cutoff, cfg.num_gaussians)
    neighbours = structure.get_all_neighbors(cfg.cutoff)
    x = [P["embedding.weight"][site.specie.Z].copy() for site in structure]
    for t in range(cfg.n_interactions):
        b = f"interactions.{t}"
        f = [dense(xi, f"{b}.in2f", bias=False) for xi in x]
        new = []
        for i in range(len(structure)):
            conv = np.zeros(cfg.n_filters)
            for nb in neighbours[i]:
                d = nb.nn_distance
                if d >= cfg.cutoff:
                    continue
                e = np.exp(-cfg.gamma * (d - mu) ** 2)
                w = ssp(dense(ssp(dense(e, f"{b}.cfconv.filter1")), f"{b}.cfconv.filter2"))
                if cfg.cutoff_fn == "cosine":
                    w = w * 0.5 * (np.cos(np.pi * d / cfg.cutoff) + 1.0)
                conv += f[nb.index] * w
            new.append(x[i] + dense(ssp(dense(conv, f"{b}.f2out")), f"{b}.dense"))
        x = new
    s = [dense(ssp(dense(xi, "structure_head.hidden")), "structure_head.out")[0] for xi in x]
    a = [dense(ssp(dense(xi, "atom_head.hidden")), "atom_head.out")[0] for xi in x]
    return float(np.mean(s)), a


@pytest.mark.parametrize("cutoff_fn", ["none", "cosine"])
def test_matches_loop_reference_on_pymatgen_neighbours(cutoff_fn: str) -> None:
    sto, li2o = _structures("SrTiO3", "Li2O")
    sto = sto.copy()
    sto.perturb(0.1, min_distance=0.05)
    enc = _encoder(
        torch.float64,
        targets=({"name": "e", "normalize": False}, {"name": "q", "level": "atom"}),
        cutoff=4.0,
        cutoff_fn=cutoff_fn,
        num_gaussians=15,
        gamma=4.0,
    )
    out = enc.predict(CrystalBatch.from_structures([sto, li2o]))
    q = torch.split(out["q"], [len(sto), len(li2o)])
    for k, s in enumerate((sto, li2o)):
        e_ref, q_ref = _reference_predict(enc, s)
        assert float(out["e"][k]) == pytest.approx(e_ref, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(q[k].numpy(), q_ref, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ layers
def test_shifted_softplus_and_cosine_cutoff_values() -> None:
    x = torch.tensor([-30.0, -1.0, 0.0, 1.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(shifted_softplus(x), torch.log(0.5 * torch.exp(x) + 0.5))
    assert float(shifted_softplus(torch.tensor(0.0))) == 0.0
    d = torch.tensor([0.0, 2.5, 5.0, 6.0], dtype=torch.float64)
    torch.testing.assert_close(cosine_cutoff(d, 5.0), torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64))


def test_cosine_cutoff_is_continuous_and_hard_cutoff_jumps() -> None:
    """A neighbour crossing r_c: the hard cutoff (paper) jumps, the cosine envelope does not."""

    def dimer(d: float) -> CrystalBatch:
        from pymatgen.core import Lattice, Structure

        return CrystalBatch.from_structures([Structure(Lattice.cubic(14.0), ["Na", "Cl"], [[0, 0, 0], [d / 14, 0, 0]])])

    eps = 1e-6
    jump = {}
    for fn in ("none", "cosine"):
        enc = _encoder(torch.float64, cutoff_fn=fn)
        inside, outside = (float(enc.predict(dimer(5.0 + s))["prediction"][0]) for s in (-eps, eps))
        jump[fn] = abs(inside - outside)
    assert jump["none"] > 1e-3, jump
    assert jump["cosine"] < 1e-9, jump


# ------------------------------------------------------------------------------ shapes
def test_atom_and_multi_target_shapes(batch: CrystalBatch) -> None:
    B, N = len(batch), batch.num_nodes
    enc = _encoder(
        targets=(
            {"name": "formation_energy", "unit": "eV/atom"},
            {"name": "stress_diag", "dim": 3, "unit": "GPa"},
            {"name": "is_metal", "task": "classification"},
            {"name": "charge", "level": "atom", "unit": "e"},
            {"name": "magmom", "level": "atom", "dim": 2},
        )
    )
    assert enc.target_set.structure_width == 1 + 3 + 2 and enc.target_set.atom_width == 1 + 2
    out = enc.predict(batch)
    assert out["formation_energy"].shape == (B,) and out["stress_diag"].shape == (B, 3)
    assert out["is_metal"].shape == (B,) and bool(((out["is_metal"] > 0) & (out["is_metal"] < 1)).all())
    assert out["charge"].shape == (N,) and out["magmom"].shape == (N, 2)
    raw = enc.net(batch)
    assert raw["is_metal"].shape == (B, 2) and raw["charge"].shape == (N, 1)
    only_atoms = _encoder(targets=({"name": "charge", "level": "atom"},))
    assert only_atoms.net.model.structure_head is None and only_atoms.predict(batch)["charge"].shape == (N,)


def test_save_load_identical(tmp_path, batch: CrystalBatch) -> None:
    targets = (*MIXED_TARGETS, {"name": "c", "task": "classification", "num_classes": 3})
    enc = _encoder(targets=targets, cutoff_fn="cosine", readout="sum", seed=7)
    enc.target_set.fit_normalizer({"e": torch.tensor([-1.0, 0.5, 2.0]), "q": torch.randn(20)})
    digest = enc.save(tmp_path / "schnet.pt", metadata={"data": "test"})
    again = SchNetEncoder(checkpoint=tmp_path / "schnet.pt", sha256=digest, device="cpu")
    assert again.config.cutoff_fn == "cosine" and again.config.readout == "sum" and again.config.n_features == 16
    assert again.metadata == {"data": "test"}
    a, b = enc.predict(batch), again.predict(batch)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- training
def test_overfits_eight_structures() -> None:
    names = ("Si", "CsCl", "Li2O", "SrTiO3", "TiO2", "VO2", "BaNiO3", "K2O2")
    batch = CrystalBatch.from_structures(_structures(*names), ids=list(names))
    y = torch.randn(len(batch), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0 + 1.0
    enc = SchNetEncoder(device="cpu", n_features=32, n_filters=32, n_interactions=2, targets=({"name": "y"},), seed=0)
    enc.target_set.fit_normalizer({"y": y})
    opt = torch.optim.Adam(enc.net.parameters(), lr=3e-3)
    enc.net.train()
    for _ in range(150):
        opt.zero_grad()
        loss, _ = enc.target_set.loss(enc.net(batch), {"y": y})
        loss.backward()
        opt.step()
    mae = float((enc.predict(batch)["y"].double() - y).abs().mean())
    assert mae < 0.1 * float(y.std()), f"MAE {mae:.3f} vs target std {float(y.std()):.3f}"


# --------------------------------------------------------------------------- config
def test_every_config_field_changes_the_model(batch: CrystalBatch) -> None:
    base = _encoder(torch.float64)
    ref = base.predict(batch)["prediction"]
    n_params = sum(p.numel() for p in base.net.parameters())
    changes = {
        "n_features": 8, "n_filters": 6, "n_interactions": 3, "cutoff": 4.0,
        "num_gaussians": 25, "gamma": 2.0, "cutoff_fn": "cosine", "readout": "sum",
    }  # fmt: skip
    for field, value in changes.items():
        enc = _encoder(torch.float64, **{field: value})
        out = enc.predict(batch)["prediction"]
        assert not torch.allclose(out, ref, atol=1e-6), f"{field}={value!r} did not change the predictions"
        if field in ("n_features", "n_filters", "n_interactions", "num_gaussians"):
            assert sum(p.numel() for p in enc.net.parameters()) != n_params, field


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_layers": 3}, "n_layers"),
        ({"readout": "max"}, "readout"),
        ({"cutoff_fn": "polynomial"}, "cutoff_fn"),
        ({"cutoff": -1.0}, "cutoff"),
        ({"n_interactions": 0}, "n_interactions"),
        ({"n_features": 1}, "n_features"),
        ({"gamma": 0.0}, "gamma"),
    ],
)
def test_invalid_config_is_a_config_error(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SchNetEncoder(device="cpu", **overrides)


def test_unknown_element_is_a_structure_error() -> None:
    batch = sample_batch()
    batch.atomic_numbers[0] = 101
    with pytest.raises(StructureError, match=r"Md \(Z=101\)"):
        SchNetEncoder(device="cpu", **SMALL).predict(batch)


def test_isolated_atom_and_package_is_light() -> None:
    """An atom without neighbours within r_c keeps its embedding (no NaN); importing the
    package does not import torch."""
    import subprocess
    import sys

    from pymatgen.core import Lattice, Structure

    lonely = CrystalBatch.from_structures([Structure(Lattice.cubic(8.0), ["He"], [[0, 0, 0]])])
    assert torch.isfinite(_encoder(cutoff=3.0).predict(lonely)["prediction"]).all()
    code = "import sys, crystal_schnet; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
