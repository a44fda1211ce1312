"""The TrainablePotential contract and the potential training engine, with a toy pair model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.io import write
from toy_potential import PairPotential

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.testing import (
    assert_forces_match_finite_differences,
    assert_stress_matches_finite_differences,
    check_potential_symmetries,
    supercell,
)
from crystal.testing.contracts import check_potential, sample_batch
from crystal.trainable_potential import fit_reference_energies
from crystal_train.potential import parse_potential_config, train_potential

ELEMENTS = ("Na", "Si", "Cl", "Cu")


def _pot(**kw):
    return PairPotential(elements=ELEMENTS, e0s={"Na": -1.0, "Si": -2.0, "Cl": -0.5, "Cu": -3.0}, device="cpu", **kw)


def test_contract_symmetries_and_extensivity_float64():
    check_potential(_pot(), sample_batch(), atol=1e-8, fd_atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_in_float32_and_float64(dtype):
    pot = _pot(dtype="float32" if dtype == torch.float32 else "float64")
    check_potential(pot, sample_batch(dtype), atol=2e-4 if dtype == torch.float32 else 1e-8, fd_atol=5e-2)


def test_symmetries_extensivity_and_dtypes():
    # float64 weights: symmetries to round-off; float32 requests agree to float32 round-off
    check_potential_symmetries(_pot(), sample_batch(), atol=1e-8, rtol=1e-7, dtype_atol=2e-4)


def test_forces_and_stress_are_finite_difference_gradients():
    pot = _pot()
    batch = sample_batch()
    assert_forces_match_finite_differences(pot, batch, delta=1e-5, atol=1e-7)
    assert_stress_matches_finite_differences(pot, batch, delta=1e-6, atol=1e-8)


def test_reference_energies_are_added_per_atom():
    pot = _pot()
    batch = sample_batch()
    e = pot.energy(batch)
    with torch.no_grad():
        for p in pot.net.model.parameters():
            p.zero_()
    e0 = pot.energy(batch)
    assert torch.allclose(e0, torch.tensor([-4.0, -1.5, -6.0], dtype=torch.float64))
    assert not torch.allclose(e, e0)


def test_fit_reference_energies_recovers_exact_e0s():
    batch = sample_batch()
    big = CrystalBatch.concat([batch, supercell(batch.select([1]), (2, 1, 1))])
    truth = {"Na": -1.25, "Si": -5.4, "Cl": -0.5, "Cu": -3.75}
    by_z = {11: truth["Na"], 14: truth["Si"], 17: truth["Cl"], 29: truth["Cu"]}
    per_atom = torch.tensor([by_z[int(z)] for z in big.atomic_numbers], dtype=torch.float64)
    energy = torch.zeros(len(big), dtype=torch.float64).index_add(0, big.batch, per_atom)
    got = fit_reference_energies(big, energy, ELEMENTS)
    # Na and Cl always appear together: only their sum is determined
    assert got["Si"] == pytest.approx(truth["Si"]) and got["Cu"] == pytest.approx(truth["Cu"])
    assert got["Na"] + got["Cl"] == pytest.approx(truth["Na"] + truth["Cl"])


def test_save_load_gives_identical_outputs(tmp_path):
    pot = _pot(hidden=8)
    sha = pot.save(tmp_path / "p.pt", metadata={"note": "x"})
    again = PairPotential(checkpoint=tmp_path / "p.pt", sha256=sha, device="cpu")
    batch = sample_batch()
    a, b = pot.compute(batch), again.compute(batch)
    assert torch.equal(a.energy, b.energy) and torch.equal(a.forces, b.forces) and torch.equal(a.stress, b.stress)
    assert again.config.hidden == 8 and again.config.elements == ELEMENTS and again.metadata == {"note": "x"}
    with pytest.raises(WeightsError, match="sha256"):
        PairPotential(checkpoint=tmp_path / "p.pt", sha256="0" * 64)
    with pytest.raises(ConfigError, match="hidden come from the checkpoint"):
        PairPotential(checkpoint=tmp_path / "p.pt", hidden=4)
    torch.save({"format": "something-else"}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="not a crystal potential checkpoint"):
        PairPotential(checkpoint=tmp_path / "bad.pt")


def test_bad_inputs_get_clear_errors():
    pot = _pot()
    with pytest.raises(ConfigError, match="needs `elements`"):
        PairPotential(device="cpu")
    with pytest.raises(ConfigError, match="Xx"):
        PairPotential(elements=("Cu", "Xx"))
    fe = CrystalBatch.from_atoms([bulk("Fe", "bcc", a=2.87), bulk("Cu", "fcc", a=3.6)], ids=["iron", "copper"])
    with pytest.raises(StructureError, match=r"element\(s\) Fe are outside the model's elements"):
        pot.compute(fe)
    close = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    close.positions[1] = close.positions[0] + [0.2, 0.0, 0.0]
    with pytest.raises(StructureError, match=r"'tight' \(0.200 Å\).*min_distance"):
        pot.compute(CrystalBatch.from_atoms([close], ids=["tight"]))
    nan = CrystalBatch.from_atoms([bulk("Cu", "fcc", a=3.6)], ids=["nan"])
    nan.frac_coords[0, 0] = float("nan")
    with pytest.raises(StructureError, match="'nan' have NaN"):
        pot.compute(nan)
    empty = CrystalBatch(
        torch.zeros(0, dtype=torch.long), torch.zeros((0, 3)), torch.eye(3)[None] * 3, torch.tensor([0]), ids=["void"]
    )
    with pytest.raises(StructureError, match="'void' have no atoms"):
        pot.compute(empty)
    assert pot.compute(CrystalBatch.empty()).energy.shape == (0,)


def _lj_dataset(path, n, seed):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.1 * rng.random(), cubic=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.calc = AseLJ(sigma=2.3, epsilon=0.4, rc=5.0, smooth=True)
        atoms.get_potential_energy()
        atoms.info["config_type"] = f"lj{k}"
        frames.append(atoms)
    write(path, frames, format="extxyz")


def test_training_loss_falls_and_run_directory(tmp_path):
    _lj_dataset(tmp_path / "train.xyz", 24, 0)
    _lj_dataset(tmp_path / "test.xyz", 6, 1)
    cfg = {
        "potential": "toy-pair",
        "model": {"hidden": 16, "cutoff": 5.0},
        "data": {"train": [str(tmp_path / "train.xyz")], "test": [str(tmp_path / "test.xyz")], "val_fraction": 0.2},
        "fit": {"max_epochs": 30, "batch_size": 4, "lr": 0.01, "scheduler": "none"},
        "output": str(tmp_path / "run"),
    }
    result = train_potential(cfg, potential_class=PairPotential, quiet=True)
    hist = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert float(hist[-1]["train_loss"]) < 0.5 * float(hist[0]["train_loss"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["elements"] == ["Cu"] and summary["sizes"] == {"train": 19, "val": 5, "test": 6}
    # better than predicting zero forces on held-out structures
    test = result.potential.metadata["sizes"]["test"]
    assert test == 6
    from crystal.targets import TargetSpec
    from crystal_train.data import read_labelled

    labels = read_labelled([tmp_path / "test.xyz"], [TargetSpec(name="forces", level="atom", dim=3)]).batch
    assert summary["metrics"]["test"]["forces_mae"] < 0.5 * float(labels.atom_properties["forces"].abs().mean())
    # the saved model reproduces the run's test metrics
    again = PairPotential(checkpoint=tmp_path / "run" / "model.pt", sha256=summary["sha256"], device="cpu")
    assert again.config.e0s == pytest.approx(summary["e0s"])
    for name in ("model.pt", "metrics.csv", "summary.json", "model-card.md", "predictions.csv", "failures.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    # fine-tuning from the checkpoint on the same data keeps improving or holds, with kept E0s
    cfg2 = dict(cfg, init=str(tmp_path / "run" / "model.pt"), e0s="keep", output=str(tmp_path / "ft"), model={})
    cfg2["fit"] = dict(cfg["fit"], max_epochs=3)
    tuned = train_potential(cfg2, potential_class=PairPotential, quiet=True)
    assert tuned.potential.config.e0s == pytest.approx(summary["e0s"])
    assert tuned.metrics["val"]["forces_mae"] <= 1.5 * summary["metrics"]["val"]["forces_mae"]


def test_train_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="'data'"):
        parse_potential_config({"potential": "x"}, "run.toml")
    with pytest.raises(ConfigError, match=r"run\.toml: field 'fit\.epochs': unknown field"):
        parse_potential_config({"potential": "x", "data": {"train": ["a"]}, "fit": {"epochs": 3}}, "run.toml")
    with pytest.raises(ConfigError, match="e0s = 'keep' needs init"):
        parse_potential_config({"potential": "x", "data": {"train": ["a"]}, "e0s": "keep"})
    with pytest.raises(ConfigError, match=r"model\.elements is set by the run"):
        parse_potential_config({"potential": "x", "data": {"train": ["a"]}, "model": {"elements": ["Cu"]}})
    with pytest.raises(ConfigError, match="stress_key"):
        parse_potential_config({"potential": "x", "data": {"train": ["a"]}, "loss": {"stress": 1.0}})
    cfg = parse_potential_config({"potential": "x", "data": {"train": ["a"]}, "fit": {"max_epochs": 7}})
    assert cfg.fit.max_epochs == 7 and cfg.fit.lr == 0.01 and cfg.fit.ema_decay == 0.99  # potential defaults kept
