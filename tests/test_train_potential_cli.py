"""`crystal train-potential` end to end: train a tiny MACE on labelled extended XYZ, reuse it
from `crystal relax`, fine-tune it, and fail clearly on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.io import write
from support import crystal_cli

TINY = ["-c", 'hidden_irreps="4x0e + 4x1o"', "-c", "max_ell=1", "-c", "num_interactions=1", "-c", "radial_mlp=[8]"]


def _frames(n: int, seed: int, symbol: str = "Cu") -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk(symbol, "fcc", a=3.6 + 0.1 * rng.random(), cubic=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=5.0, smooth=True)
        atoms.get_potential_energy()
        out.append(atoms)
    return out


@pytest.mark.slow
def test_train_relax_finetune_and_errors(tmp_path):
    write(tmp_path / "train.xyz", _frames(8, 0), format="extxyz")
    write(tmp_path / "test.xyz", _frames(3, 1), format="extxyz")
    run = tmp_path / "run"
    r = crystal_cli(
        "train-potential",
        "--potential",
        "mace",
        "--train",
        str(tmp_path / "train.xyz"),
        "--test",
        str(tmp_path / "test.xyz"),
        *TINY,
        "--epochs",
        "2",
        "--set",
        "fit.batch_size=4",
        "-o",
        str(run),
        "-q",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["potential"] == "mace" and summary["elements"] == ["Cu"] and summary["epochs"] == 2
    assert set(summary["metrics"]["test"]) >= {"energy_mae_mev_per_atom", "forces_mae"}
    # the run writers' artefacts, as for every trainer (parity: energy per atom and forces)
    for name in ("model-card.md", "predictions.csv", "parity.png", "failures.csv", "metrics.csv"):
        assert (run / name).is_file(), name

    # the checkpoint is a potential like any other: relax with it from the CLI
    write(tmp_path / "cu.cif", _frames(1, 2)[0], format="cif")
    r = crystal_cli(
        "relax",
        str(tmp_path / "cu.cif"),
        "--potential",
        "mace",
        "-c",
        f"checkpoint='{run / 'model.pt'}'",
        "-o",
        str(tmp_path / "relaxed"),
    )
    assert r.returncode == 0, r.stderr

    # fine-tuning keeps the architecture of the checkpoint
    r = crystal_cli(
        "train-potential",
        "--potential",
        "mace",
        "--init",
        str(run / "model.pt"),
        "--train",
        str(tmp_path / "train.xyz"),
        "--epochs",
        "1",
        "--set",
        "fit.batch_size=4",
        "-o",
        str(tmp_path / "ft"),
        "-q",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["init"] == str(run / "model.pt")

    # fine-tuning on elements the model does not cover is refused, naming them
    write(tmp_path / "ni.xyz", _frames(2, 3, "Ni"), format="extxyz")
    r = crystal_cli(
        "train-potential",
        "--potential",
        "mace",
        "--init",
        str(run / "model.pt"),
        "--train",
        str(tmp_path / "ni.xyz"),
        "-o",
        str(tmp_path / "ft2"),
        "-q",
    )
    assert r.returncode != 0 and "Ni" in r.stderr and "outside the model's elements" in r.stderr

    # bad configuration names the field; a missing file names the file
    r = crystal_cli(
        "train-potential",
        "--potential",
        "mace",
        "--train",
        str(tmp_path / "train.xyz"),
        "--set",
        "fit.epochz=3",
        "-o",
        str(tmp_path / "x"),
    )
    assert r.returncode != 0 and "fit.epochz" in r.stderr
    r = crystal_cli("train-potential", str(tmp_path / "nope.toml"))
    assert r.returncode != 0 and "nope.toml" in r.stderr
    r = crystal_cli(
        "train-potential", "--potential", "cgcnn", "--train", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "y")
    )
    assert r.returncode != 0 and "no potential plugin named 'cgcnn'" in r.stderr


def test_bad_runs_fail_fast_naming_the_problem(tmp_path):
    write(tmp_path / "train.xyz", _frames(2, 0), format="extxyz")
    r = crystal_cli(
        "train-potential",
        "--potential",
        "mace",
        "--train",
        str(tmp_path / "train.xyz"),
        "--set",
        "fit.epochz=3",
        "-o",
        str(tmp_path / "x"),
    )
    assert r.returncode != 0 and "fit.epochz" in r.stderr
    r = crystal_cli("train-potential", str(tmp_path / "nope.toml"))
    assert r.returncode != 0 and "nope.toml" in r.stderr
    r = crystal_cli("train-potential", "--potential", "mace")
    assert r.returncode != 0 and "--train" in r.stderr
