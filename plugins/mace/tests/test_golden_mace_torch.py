"""mace-torch's released format, loaded by crystal, against mace-torch's own outputs (golden fixture).

``tests/golden/make_golden.py`` (run once in a side venv with mace-torch; see its docstring) built small
random-weight ``ScaleShiftMACE`` models with the foundation models' architecture choices, pickled them
as ``.model`` files like the releases, converted them with ``crystal_mace.convert.convert_module``
(what ``crystal weights import --trust-pickle`` runs) into ``<name>.payload.pt`` and recorded mace-torch's
float64 energy, forces and stress on four periodic structures. Here crystal loads the payloads without
mace-torch and must agree: ≤ 1e-8 relative in float64 (measured: ≤ 7e-15), ≤ 5e-5 in float32
(measured: ≤ 4e-6); see the plugin README.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crystal.batch import CrystalBatch
from crystal_mace.convert import convert_module, load_payload, payload_to_checkpoint
from crystal_mace.potential import MACEPotential

ase = pytest.importorskip("ase")

GOLDEN = Path(__file__).parent / "golden"
F64_TOL = 1e-8
F32_TOL = 5e-5

torch.set_num_threads(1)


def _reference(name: str) -> tuple[CrystalBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ase import Atoms

    ref = json.loads((GOLDEN / f"{name}.reference.json").read_text(encoding="utf-8"))
    recs = ref["structures"]
    atoms = [Atoms(numbers=r["numbers"], positions=r["positions"], cell=r["cell"], pbc=True) for r in recs]
    batch = CrystalBatch.from_atoms(atoms, ids=[r["id"] for r in recs]).to(dtype=torch.float64)
    energy = torch.tensor([r["energy"] for r in recs], dtype=torch.float64)
    forces = torch.tensor(np.concatenate([r["forces"] for r in recs]), dtype=torch.float64)
    v = torch.tensor([r["stress"] for r in recs], dtype=torch.float64)  # Voigt xx yy zz yz xz xy
    stress = torch.stack([v[:, [0, 5, 4]], v[:, [5, 1, 3]], v[:, [4, 3, 2]]], dim=1)
    return batch, energy, forces, stress


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b).abs().max() / b.abs().max())


def _check(pot: MACEPotential, name: str, tol: float) -> dict[str, float]:
    batch, energy, forces, stress = _reference(name)
    out = pot.compute(batch)
    assert out.forces is not None and out.stress is not None
    errors = {
        "energy": float(((out.energy - energy).abs() / energy.abs()).max()),
        "forces": _rel(out.forces, forces),
        "stress": _rel(out.stress, stress),
    }
    assert all(e <= tol for e in errors.values()), (name, errors)
    return errors


@pytest.mark.parametrize("name", ["mp0", "mpa0", pytest.param("off23", marks=pytest.mark.slow)])
def test_float64_parity_with_mace_torch(name: str) -> None:
    pot = MACEPotential(checkpoint=GOLDEN / f"{name}.payload.pt", min_distance=0.0)
    assert pot.trained and pot.metadata["source"] == "mace-torch"
    _check(pot, name, F64_TOL)


@pytest.mark.parametrize("name", ["mp0", pytest.param("mpa0", marks=pytest.mark.slow)])
def test_float32_parity_with_mace_torch(name: str) -> None:
    pot = MACEPotential(checkpoint=GOLDEN / f"{name}.payload.pt", dtype="float32", min_distance=0.0)
    assert next(pot.net.model.parameters()).dtype == torch.float32
    _check(pot, name, F32_TOL)


@pytest.mark.slow
def test_foundation_architecture_is_read_from_the_payload() -> None:
    ckpt = payload_to_checkpoint(load_payload(GOLDEN / "mpa0.payload.pt"))
    cfg = ckpt["config"]
    assert cfg["elements"] == ["H", "O", "Si", "Fe"]
    assert cfg["e0s"] == {"H": -3.2, "O": -4.9, "Si": -5.4, "Fe": -8.3}
    assert (cfg["scale"], cfg["shift"]) == (pytest.approx(1.1), pytest.approx(0.05))
    assert cfg["pair_repulsion"] and cfg["distance_transform"] == "agnesi"
    assert cfg["num_bessel"] == 10 and cfg["radial_mlp"] == [16, 16, 16] and cfg["cutoff"] == 4.5
    assert len(cfg["covalent_radii"]) == 4
    off = payload_to_checkpoint(load_payload(GOLDEN / "off23.payload.pt"))["config"]
    assert off["interaction_first"] == "non_residual" and off["correlation"] == [3, 2]


def test_named_pickled_module_weights_load_their_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """``weights = "mace-mp-0-small"`` (a pickled-module entry) goes through core's converted payload."""
    import crystal.weights as cw

    entry = MACEPotential.weights.entry("mace-mp-0-small")
    assert entry.format == "pickled-module" and entry.converter == "crystal_mace.convert:convert_module"
    payload_file = GOLDEN / "mp0.payload.pt"  # stands in for the converted release
    monkeypatch.setattr(cw, "resolve_weights", lambda name: (payload_file, entry))
    monkeypatch.setattr(cw, "load_state_dict", lambda name, map_location="cpu": load_payload(payload_file))
    pot = MACEPotential(weights="mace-mp-0-small", min_distance=0.0)
    _check(pot, "mp0", F64_TOL)


@pytest.mark.slow
def test_saved_crystal_checkpoint_of_a_loaded_model_round_trips(tmp_path: Path) -> None:
    pot = MACEPotential(checkpoint=GOLDEN / "off23.payload.pt", min_distance=0.0)
    pot.save(tmp_path / "off23.pt")
    again = MACEPotential(checkpoint=tmp_path / "off23.pt", min_distance=0.0)
    _check(again, "off23", F64_TOL)


def test_unsupported_mace_torch_features_are_named() -> None:
    payload = load_payload(GOLDEN / "mp0.payload.pt")
    hp: dict[str, Any] = dict(payload["hparams"])
    hp.update(interaction_cls="RealAgnosticDensityResidualInteractionBlock", use_agnostic_product=True)
    with pytest.raises(ValueError, match=r"RealAgnosticDensityResidualInteractionBlock.*use_agnostic_product"):
        payload_to_checkpoint({**payload, "hparams": hp})
    with pytest.raises(TypeError, match="not a mace-torch MACE model"):
        convert_module(torch.nn.Linear(2, 2))
