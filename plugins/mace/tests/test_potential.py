"""Tests of the ``mace`` potential component (tiny widths, CPU, one thread).

Symmetry, batching and finite-difference checks run in float64 on rattled periodic crystals
(fcc Cu, rock-salt NaCl), with crystal's contract checks (:func:`crystal.testing.contracts.check_potential`).
"""

from __future__ import annotations

import math

import pytest
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.neighbors import radius_graph
from crystal.testing import (
    assert_stress_matches_finite_differences,
    assert_supercell_extensive,
    check_potential_symmetries,
    random_rotation,
    rotate,
)
from crystal.testing.contracts import check_declarations, check_potential
from crystal.trainable_potential import fit_reference_energies
from crystal_mace.potential import MACEConfig, MACEPotential

torch.set_num_threads(1)

TINY = dict(
    hidden_irreps="8x0e + 8x1o",
    max_ell=2,
    radial_mlp=(16, 16),
    cutoff=4.0,
    avg_num_neighbors=12.0,
    scale=0.7,
    shift=-0.2,
)


def _crystals() -> CrystalBatch:
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    for k, atoms in enumerate((cu, nacl)):
        atoms.rattle(0.05, seed=k + 1)
    return CrystalBatch.from_atoms([cu, nacl], ids=["Cu2", "NaCl"]).to(dtype=torch.float64)


@pytest.fixture(scope="module")
def crystals() -> CrystalBatch:
    return _crystals()


@pytest.fixture(scope="module")
def pot() -> MACEPotential:
    return MACEPotential(elements=("Na", "Cl", "Cu"), e0s={"Na": -1.0, "Cl": -2.0, "Cu": -3.0}, device="cpu", **TINY)


def test_contract(pot: MACEPotential, crystals: CrystalBatch) -> None:
    check_declarations(pot)
    # float64 model: symmetries to round-off; forces vs central differences (δ = 1e-4 Å)
    check_potential(pot, crystals, atol=1e-9, rtol=1e-7, fd_delta=1e-4, fd_atol=1e-6)


def test_stress_symmetries_and_rotated_supercell(pot: MACEPotential, crystals: CrystalBatch) -> None:
    assert_stress_matches_finite_differences(pot, crystals, delta=1e-5, atol=1e-7)
    # float64 model: symmetries to round-off; float32 requests agree to float32 round-off
    check_potential_symmetries(pot, crystals, atol=1e-9, rtol=1e-7, supercell_reps=(1, 2, 2), dtype_atol=1e-4)
    # a rotated 1x2x2 supercell: energy 4x, stress unchanged, the same force on every image
    R = random_rotation(torch.Generator().manual_seed(7), dtype=torch.float64)
    assert_supercell_extensive(pot, rotate(crystals, R), (1, 2, 2), atol=1e-9, rtol=1e-9, stress_atol=1e-10)


def test_save_load_identical(pot: MACEPotential, crystals: CrystalBatch, tmp_path) -> None:
    sha = pot.save(tmp_path / "mace.pt", metadata={"note": "test"})
    loaded = MACEPotential(checkpoint=tmp_path / "mace.pt", sha256=sha, device="cpu")
    assert loaded.config.hidden_irreps == pot.config.hidden_irreps and loaded.config.scale == 0.7
    a, b = pot.compute(crystals), loaded.compute(crystals)
    assert torch.equal(a.energy, b.energy) and torch.equal(a.forces, b.forces) and torch.equal(a.stress, b.stress)
    # float32 evaluation of the same checkpoint: close, not identical
    c = MACEPotential(checkpoint=tmp_path / "mace.pt", dtype="float32", device="cpu").compute(crystals)
    torch.testing.assert_close(c.energy, a.energy, atol=1e-4, rtol=1e-5)
    with pytest.raises(WeightsError, match="sha256"):
        MACEPotential(checkpoint=tmp_path / "mace.pt", sha256="0" * 64, device="cpu")
    with pytest.raises(ConfigError, match="hidden_irreps"):
        MACEPotential(checkpoint=tmp_path / "mace.pt", hidden_irreps="16x0e", device="cpu")


def test_isolated_atoms_have_no_edges(pot: MACEPotential) -> None:
    from ase import Atoms

    lone = Atoms("Cu", positions=[[1.0, 2.0, 3.0]], cell=[12.0, 12.0, 12.0], pbc=True)
    pair = Atoms("NaCl", positions=[[0, 0, 0], [6, 6, 6]], cell=[12.0, 12.0, 12.0], pbc=True)
    out = pot.compute(CrystalBatch.from_atoms([lone, pair], ids=["Cu", "NaCl"]).to(dtype=torch.float64))
    assert torch.isfinite(out.energy).all()
    assert torch.equal(out.forces, torch.zeros_like(out.forces))
    assert torch.equal(out.stress, torch.zeros_like(out.stress))


def test_unknown_element_is_named(pot: MACEPotential) -> None:
    from ase.build import bulk

    with pytest.raises(StructureError, match=r"element\(s\) Si .*outside"):
        pot.compute(CrystalBatch.from_atoms([bulk("Si", "diamond", a=5.43)], ids=["Si"]))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden_irreps", "8x0e + 4x1o", "same multiplicity"),
        ("hidden_irreps", "8x1o", "start with 0e"),
        ("hidden_irreps", "nonsense", "irreps"),
        ("mlp_irreps", "16x1o", "scalars"),
        ("correlation", (3, 3, 3), "num_interactions"),
        ("correlation", 7, "1..4"),
        ("radial_mlp", (0,), "radial_mlp"),
        ("unknown_field", 1, "unknown_field"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MACEPotential.make_config({"elements": ("Cu",), field: value})


def test_new_model_needs_elements() -> None:
    with pytest.raises(ConfigError, match="elements"):
        MACEPotential(device="cpu")


def test_statistics(crystals: CrystalBatch) -> None:
    energy = torch.tensor([-7.0, -20.0], dtype=torch.float64)
    forces = torch.linspace(-1.0, 2.0, crystals.num_nodes * 3, dtype=torch.float64).reshape(-1, 3)
    data = _with_labels(crystals, energy, forces)
    offsets = torch.tensor([-6.0, -12.0], dtype=torch.float64)
    cfg = MACEConfig(elements=("Na", "Cl", "Cu"), cutoff=4.0)
    graph = radius_graph(data, 4.0)
    stats = MACEPotential.statistics(cfg, data, offsets, graph)
    n = data.num_atoms.to(torch.float64)
    assert stats["shift"] == pytest.approx(float(((energy - offsets) / n).mean()))
    assert stats["scale"] == pytest.approx(math.sqrt(float((forces**2).mean())))
    assert stats["avg_num_neighbors"] == pytest.approx(graph.edge_index.shape[1] / data.num_nodes)
    assert 5 < stats["avg_num_neighbors"] < 40
    # explicitly chosen values are kept
    explicit = MACEConfig(elements=("Na", "Cl", "Cu"), cutoff=4.0, avg_num_neighbors=10.0)
    assert "avg_num_neighbors" not in MACEPotential.statistics(explicit, data, offsets, graph)


def _with_labels(batch: CrystalBatch, energy: torch.Tensor, forces: torch.Tensor) -> CrystalBatch:
    import dataclasses

    return dataclasses.replace(
        batch,
        crystal_properties={**batch.crystal_properties, "energy": energy},
        atom_properties={**batch.atom_properties, "forces": forces},
    )


def _lj_cells(n: int = 10) -> CrystalBatch:
    """Rattled, strained fcc Cu cells (4 atoms) labelled by ASE's Lennard-Jones calculator."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.lj import LennardJones

    rng = np.random.default_rng(0)
    atoms_list, energies, forces = [], [], []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * (0.96 + 0.08 * rng.random()), cubic=True)
        atoms.rattle(0.08, seed=k)
        atoms.calc = LennardJones(sigma=2.33, epsilon=0.4, rc=4.0, smooth=True)
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        atoms_list.append(atoms)
    batch = CrystalBatch.from_atoms(atoms_list, ids=[f"cu{k}" for k in range(n)]).to(dtype=torch.float64)
    return _with_labels(
        batch, torch.tensor(energies, dtype=torch.float64), torch.tensor(np.concatenate(forces), dtype=torch.float64)
    )


def test_energy_loss_falls_on_lennard_jones_cells() -> None:
    data = _lj_cells(10)
    elements = ("Cu",)
    e0s = fit_reference_energies(data, data.crystal_properties["energy"], elements)
    cfg = MACEPotential.make_config(
        dict(hidden_irreps="8x0e + 8x1o", max_ell=2, radial_mlp=(16, 16), cutoff=4.0, elements=elements, e0s=e0s)
    )
    offsets = e0s["Cu"] * data.num_atoms.to(torch.float64)
    stats = MACEPotential.statistics(cfg, data, offsets, radius_graph(data, 4.0))
    pot = MACEPotential(MACEPotential.make_config(cfg.model_dump(), **stats), device="cpu")
    net = pot.net
    net.energy_weight, net.forces_weight = 1.0, 1.0
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        out = net.training_loss(data)
        out["loss"].backward()
        opt.step()
        losses.append((float(out["energy_rmse"]), float(out["forces_rmse"])))
    net.eval()
    final = net.training_loss(data)
    assert float(final["energy_rmse"]) < 0.5 * losses[0][0], losses
    assert float(final["forces_rmse"]) < losses[0][1], losses


@pytest.mark.slow
def test_train_potential_end_to_end(tmp_path) -> None:
    """core's training loop on LJ-labelled Cu cells: runs, writes a checkpoint that reloads identically."""
    from ase.io import write

    from crystal_train.potential import train_potential

    data = _lj_cells(12)
    atoms = data.to_atoms()
    for k, a in enumerate(atoms):
        n0 = int(data.num_atoms[:k].sum())
        a.info["energy"] = float(data.crystal_properties["energy"][k])
        a.arrays["forces"] = data.atom_properties["forces"][n0 : n0 + len(a)].numpy()
    write(tmp_path / "train.xyz", atoms, format="extxyz")
    result = train_potential(
        {
            "potential": "mace",
            "model": {"hidden_irreps": "8x0e + 8x1o", "max_ell": 2, "radial_mlp": [16, 16], "cutoff": 4.0},
            "data": {"train": [str(tmp_path / "train.xyz")], "val_fraction": 0.25},
            "fit": {"max_epochs": 8, "batch_size": 3, "lr": 0.01},
            "output": str(tmp_path / "run"),
            "device": "cpu",
        },
        quiet=True,
    )
    assert math.isfinite(result.metrics["val"]["forces_rmse"])
    pot = MACEPotential(checkpoint=tmp_path / "run" / "model.pt", device="cpu")
    assert pot.config.avg_num_neighbors > 10 and pot.config.scale > 0.1
    out = pot.compute(data)
    assert torch.isfinite(out.energy).all()


def test_nve_energy_drift_is_small_with_shipped_si_weights() -> None:
    """Velocity Verlet with the trained Si model (run in float64): total energy is conserved."""
    from ase.build import bulk

    from crystal_sim.md import run_md

    pot = MACEPotential(weights="mace-mlearn-si", dtype="float64", device="cpu")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.02, seed=0)
    batch = CrystalBatch.from_atoms([atoms])
    result = run_md(pot, batch, steps=40, timestep=1.0, temperature=300.0, seed=0, log_every=1)
    total = result.total_energy[:, 0] / 8  # eV/atom
    exchanged = float(result.kinetic_energy[:, 0].max() - result.kinetic_energy[:, 0].min()) / 8
    assert torch.isfinite(total).all() and exchanged > 5e-3  # the atoms really move
    assert float(total.max() - total.min()) < 1e-2 * exchanged
