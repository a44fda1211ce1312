"""Tests of the crystal-megnet encoder plugin (CPU; about 10 s on 2 cores).

Invariance tests run in float32 (the default) and in float64 (``enc.net.double()``) with
tolerances set by the round-off of each: MEGNet pools with means and Set2Set attention, so
its structure outputs are intensive and must be *equal* for a supercell.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable

import pytest
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.testing import permute, random_rotation, rotate, supercell, translate, unimodular_recell
from crystal.testing.contracts import check_plugin, sample_batch
from crystal_megnet.encoder import MEGNetEncoder

torch.set_num_threads(1)

# small model for the fast tests; the defaults are exercised by the contract and overfit tests
SMALL = {"hidden_dim": 16, "block_dim": 8, "readout_dim": 4, "embedding_dim": 8, "num_gaussians": 20}
REAL = ("CsCl", "Si", "Li2O", "SrTiO3", "BaNiO3", "VO2", "K2O2", "Graphite")


def _real_batch() -> CrystalBatch:
    """8 real crystals bundled with pymatgen (2 to 10 atoms each)."""
    from pymatgen.util.testing import PymatgenTest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [PymatgenTest.get_structure(name) for name in REAL]
    return CrystalBatch.from_structures(structures, ids=list(REAL))


def _with_property(batch: CrystalBatch, name: str, values: torch.Tensor) -> CrystalBatch:
    out = batch.to()
    out.crystal_properties = {**batch.crystal_properties, name: values.to(torch.float64)}
    return out


# ---------------------------------------------------------------------------- contract
def test_contract() -> None:
    enc = check_plugin("encoder", "megnet")
    assert isinstance(enc, MEGNetEncoder)


def test_default_architecture_is_the_papers() -> None:
    """n1/n2/n3 = 64/32/16, 3 blocks, 16-d embedding, 100 Gaussians: 167,761 parameters for one
    scalar target (counted by hand from make_megnet_model of the reference code)."""
    enc = MEGNetEncoder(device="cpu")
    cfg = enc.config
    assert (cfg.cutoff, cfg.num_gaussians, cfg.gaussian_start, cfg.gaussian_stop, cfg.gaussian_width) == (
        4.0,
        100,
        0.0,
        5.0,
        0.5,
    )
    assert (cfg.embedding_dim, cfg.hidden_dim, cfg.block_dim, cfg.readout_dim) == (16, 64, 32, 16)
    assert (cfg.num_blocks, cfg.set2set_steps, cfg.dropout, cfg.state_inputs) == (3, 3, 0.0, ())
    model = enc.net.model
    assert model.embedding.weight.shape == (95, 16)
    expected = (
        95 * 16  # embedding
        + (16 * 64 + 64 + 64 * 32 + 32)  # pre-block atoms
        + (100 * 64 + 64 + 64 * 32 + 32)  # pre-block bonds
        + (2 * 64 + 64 + 64 * 32 + 32)  # pre-block state [0, 0]
        + 3 * ((128 + 96 + 96) * 64 + 3 * 64 + 3 * (64 * 64 + 64) + 3 * (64 * 32 + 32))  # φe, φv, φu
        + 2 * 3 * (32 * 64 + 64 + 64 * 32 + 32)  # FF of blocks 2 and 3
        + 2 * (32 * 16 + 16 + 32 * 64 + 64)  # two Set2Set
        + (96 * 32 + 32 + 32 * 16 + 16 + 16 * 1 + 1)  # readout
    )
    assert sum(p.numel() for p in enc.net.parameters()) == expected == 167_761


# -------------------------------------------------------------------------- invariances
TRANSFORMS: dict[str, Callable[[CrystalBatch], CrystalBatch]] = {
    "rotation": lambda b: rotate(b, random_rotation(torch.Generator().manual_seed(3), dtype=b.dtype)),
    "translation": lambda b: translate(b, torch.tensor([0.3, -1.2, 2.5], dtype=b.dtype)),
    "permutation": lambda b: permute(b, torch.Generator().manual_seed(4))[0],
    "supercell 2x1x1": lambda b: supercell(b, (2, 1, 1)),
    "supercell 2x2x2": lambda b: supercell(b, (2, 2, 2)),
    "unimodular re-cell": lambda b: unimodular_recell(b),
}


TEMPERATURES = torch.tensor([0.3, 0.8, 1.2])  # T / 1000 K


def _state_encoder() -> MEGNetEncoder:
    """A default-size model with a declared state input, and a per-atom target too."""
    return MEGNetEncoder(
        device="cpu", state_inputs=("temperature",), targets=({"name": "y"}, {"name": "q", "level": "atom"})
    )


# (rtol, atol): float32 round-off through 3 blocks and two Set2Sets is ~1e-6 relative (more
# on sums of 8x as many bonds in a 2x2x2 supercell); float64 is ~1e-16, so it is held 1e4 tighter
TOLERANCES = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-14)}


def _assert_close(got: torch.Tensor, ref: torch.Tensor, precision: str, what: str) -> None:
    rtol, atol = TOLERANCES[precision]
    dev = (got - ref).abs().max().item()
    assert torch.allclose(got, ref, rtol=rtol, atol=atol), f"{precision}: {what} (max |Δ| {dev:.2e})"


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_invariances(precision: str) -> None:
    enc = _state_encoder()
    if precision == "float64":
        enc.net.double()
    batch = _with_property(sample_batch(), "temperature", TEMPERATURES)
    ref = enc.predict(batch)
    assert ref["y"].dtype == getattr(torch, precision)
    rtol, atol = TOLERANCES[precision]
    spread = (ref["y"][:, None] - ref["y"][None, :]).abs().max().item()
    assert spread > 100 * (atol + rtol * ref["y"].abs().max().item()), "crystals must be told apart"
    for label, transform in TRANSFORMS.items():
        other = _with_property(transform(batch), "temperature", TEMPERATURES)  # supercell() drops properties
        got = enc.predict(other)
        _assert_close(got["y"], ref["y"], precision, f"{label} changes the structure prediction")
        if label in ("rotation", "translation", "unimodular re-cell"):
            _assert_close(got["q"], ref["q"], precision, f"{label} changes per-atom predictions")
    permuted, order = permute(batch, torch.Generator().manual_seed(5))
    _assert_close(enc.predict(permuted)["q"], ref["q"][order], precision, "per-atom predictions under permutation")
    big = enc.predict(_with_property(supercell(batch, (2, 1, 1)), "temperature", TEMPERATURES))["q"]
    # supercell() keeps atoms grouped per crystal, image by image: each crystal's atoms repeat
    expected = torch.cat([ref["q"][batch.batch == b].repeat(2) for b in range(len(batch))])
    _assert_close(big, expected, precision, "per-atom predictions in a 2x1x1 supercell")


# ------------------------------------------------------------------------ global state
def test_state_input_changes_the_prediction_and_defaults_fill_in() -> None:
    enc = MEGNetEncoder(device="cpu", state_inputs=("temperature",), state_default={"temperature": 300.0}, **SMALL)
    batch = sample_batch()
    cold = enc.predict(_with_property(batch, "temperature", torch.full((3,), 300.0)))["prediction"]
    hot = enc.predict(_with_property(batch, "temperature", torch.full((3,), 1000.0)))["prediction"]
    assert (hot - cold).abs().min().item() > 1e-4
    # absent from the batch: the default is used, exactly as if it were given
    assert torch.equal(enc.predict(batch)["prediction"], cold)
    # per-crystal values: each crystal sees its own temperature
    mixed = enc.predict(_with_property(batch, "temperature", torch.tensor([300.0, 1000.0, 300.0])))["prediction"]
    assert torch.equal(mixed[[0, 2]], cold[[0, 2]]) and mixed[1] == hot[1]


def test_missing_state_input_without_default_is_named() -> None:
    enc = MEGNetEncoder(
        device="cpu", state_inputs=("temperature", "pressure"), state_default={"pressure": 0.0}, **SMALL
    )
    batch = _with_property(sample_batch(), "energy", torch.zeros(3))
    with pytest.raises(StructureError, match=r"state input 'temperature' is missing.*available: energy"):
        enc.predict(batch)
    bad = _with_property(sample_batch(), "temperature", torch.zeros(3, 2))
    with pytest.raises(StructureError, match="one number per crystal"):
        enc.predict(bad)


def _fit(enc: MEGNetEncoder, batch: CrystalBatch, y: torch.Tensor, steps: int, lr: float) -> float:
    """Plain Adam on ``enc.net``; returns the final MAE in the target's unit."""
    enc.target_set.fit_normalizer({"prediction": y})
    opt = torch.optim.Adam(enc.net.parameters(), lr=lr)
    enc.net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = enc.target_set.loss(enc.net(batch), {"prediction": y})
        loss.backward()
        opt.step()
    return (enc.predict(batch)["prediction"].double() - y).abs().mean().item()


def test_state_is_used_to_fit_a_temperature_dependence() -> None:
    """One crystal at six temperatures with six different targets: only a model that reads
    the state can fit them; the same model without state inputs cannot beat the mean."""
    torch.manual_seed(0)
    base = sample_batch().select([1])
    temps = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)  # e.g. T / 1000 K
    batch = CrystalBatch.concat([base] * 6)
    batch = _with_property(batch, "temperature", temps)
    y = torch.sin(3.0 * temps)
    with_state = _fit(MEGNetEncoder(device="cpu", state_inputs=("temperature",), **SMALL), batch, y, 100, 1e-2)
    without = _fit(MEGNetEncoder(device="cpu", **SMALL), batch, y, 100, 1e-2)
    mad = (y - y.mean()).abs().mean().item()
    assert with_state < 0.1 * mad, f"with state: MAE {with_state:.3f} vs mean absolute deviation {mad:.3f}"
    assert without > 0.9 * mad, f"without state the 6 copies are identical inputs (MAE {without:.3f})"


# ---------------------------------------------------------------------------- targets
def test_per_atom_target_shapes() -> None:
    enc = MEGNetEncoder(
        device="cpu", targets=({"name": "charge", "level": "atom"}, {"name": "m", "level": "atom", "dim": 3}), **SMALL
    )
    batch = sample_batch()
    out = enc.predict(batch)
    assert out["charge"].shape == (batch.num_nodes,) and out["m"].shape == (batch.num_nodes, 3)
    assert enc.net.model.structure_head is None and enc.net.model.set2set_v is None


def test_multi_target_shapes() -> None:
    targets = (
        {"name": "e_form", "unit": "eV/atom"},
        {"name": "gaps", "dim": 2, "unit": "eV"},
        {"name": "metal", "task": "classification"},
    )
    enc = MEGNetEncoder(device="cpu", targets=targets, **SMALL)
    out = enc.predict(sample_batch())
    assert enc.target_set.structure_width == 1 + 2 + 2
    assert out["e_form"].shape == (3,) and out["gaps"].shape == (3, 2) and out["metal"].shape == (3,)
    assert ((out["metal"] > 0) & (out["metal"] < 1)).all()
    assert enc.net.model.atom_head is None


# ------------------------------------------------------------------------ persistence
def test_save_load_identical(tmp_path) -> None:
    cfg = {**SMALL, "state_inputs": ("temperature",), "state_default": {"temperature": 500.0}, "dropout": 0.1}
    enc = MEGNetEncoder(device="cpu", seed=7, targets=({"name": "y"}, {"name": "c", "task": "classification"}), **cfg)
    enc.target_set.fit_normalizer({"y": torch.tensor([1.0, 4.0, 9.0])})
    digest = enc.save(tmp_path / "megnet.pt", metadata={"data": "test"})
    again = MEGNetEncoder(checkpoint=tmp_path / "megnet.pt", sha256=digest, device="cpu")
    assert again.config.state_default == {"temperature": 500.0} and again.config.state_inputs == ("temperature",)
    assert again.metadata == {"data": "test"}
    batch = sample_batch()
    a, b = enc.predict(batch), again.predict(batch)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------ training
def test_overfit_eight_real_structures() -> None:
    """Default architecture, 8 real crystals, a random target: Adam drives the MAE far below
    the target's spread."""
    torch.manual_seed(0)
    batch = _real_batch()
    y = torch.randn(len(batch), dtype=torch.float64) * 2.0 + 1.0
    enc = MEGNetEncoder(device="cpu")
    mae = _fit(enc, batch, y, 100, 3e-3)
    std = y.std().item()
    assert mae < 0.1 * std, f"MAE {mae:.3f} after 100 steps, target std {std:.3f}"


# ------------------------------------------------------------------------------ config
_CHANGES = {
    "cutoff": 5.0,
    "num_gaussians": 30,
    "gaussian_start": 0.5,
    "gaussian_stop": 6.0,
    "gaussian_width": 0.3,
    "embedding_dim": 4,
    "hidden_dim": 12,
    "block_dim": 6,
    "readout_dim": 3,
    "num_blocks": 2,
    "set2set_steps": 1,
    "seed": 1,
}


@pytest.mark.parametrize("field", sorted(_CHANGES))
def test_every_field_changes_the_prediction(field: str) -> None:
    batch = sample_batch()
    ref = MEGNetEncoder(device="cpu", **SMALL).predict(batch)["prediction"]
    got = MEGNetEncoder(device="cpu", **{**SMALL, field: _CHANGES[field]}).predict(batch)["prediction"]
    assert (got - ref).abs().max().item() > 1e-6, f"{field} does not change the prediction"


def test_dropout_acts_in_training_only() -> None:
    batch = sample_batch()
    plain = MEGNetEncoder(device="cpu", **SMALL)
    drop = MEGNetEncoder(device="cpu", dropout=0.5, **SMALL)
    assert torch.equal(plain.predict(batch)["prediction"], drop.predict(batch)["prediction"])  # eval: off
    drop.net.train()
    torch.manual_seed(0)
    a = drop.net(batch)["prediction"]
    b = drop.net(batch)["prediction"]
    plain.net.train()
    assert not torch.allclose(a, b) and torch.equal(plain.net(batch)["prediction"], plain.net(batch)["prediction"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_blocks": 3}, "unknown parameter"),
        ({"cutoff": -1.0}, "cutoff"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"gaussian_start": 5.0, "gaussian_stop": 4.0}, "gaussian_stop must be above"),
        ({"state_inputs": ("t", "t")}, "duplicate state_inputs"),
        ({"state_default": {"temperature": 300.0}}, "undeclared state inputs temperature"),
        ({"state_inputs": ("t",), "state_default": {"t": float("nan")}}, "finite"),
    ],
)
def test_invalid_config_is_a_config_error(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MEGNetEncoder(device="cpu", **overrides)


# ------------------------------------------------------------------------------ errors
def test_unknown_element_is_a_structure_error() -> None:
    """The reference embedding covers Z = 0 … 94 (nvocal = 95): Am (Z = 95) is outside."""
    batch = sample_batch()
    z = batch.atomic_numbers.clone()
    z[0] = 95
    bad = CrystalBatch(
        atomic_numbers=z, frac_coords=batch.frac_coords, lattices=batch.lattices, num_atoms=batch.num_atoms
    )
    with pytest.raises(StructureError, match=r"Am \(Z=95\).*Z 1-94"):
        MEGNetEncoder(device="cpu", **SMALL).predict(bad)


def test_crystal_without_bonds_is_finite() -> None:
    """A crystal whose atoms are all farther apart than the cutoff has no bonds: the bond
    means and the bond Set2Set read out zeros, predictions stay finite and batch-independent."""
    from ase import Atoms

    lonely = Atoms("Na", positions=[[0, 0, 0]], cell=[6.0, 6.0, 6.0], pbc=True)
    batch = CrystalBatch.concat([CrystalBatch.from_atoms([lonely]), sample_batch()])
    enc = MEGNetEncoder(device="cpu", **SMALL)
    out = enc.predict(batch)["prediction"]
    assert torch.isfinite(out).all()
    alone = enc.predict(batch.select([0]))["prediction"]
    assert (alone - out[0]).abs().item() < 1e-6


def test_import_does_not_import_torch() -> None:
    code = "import sys, crystal_megnet; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
