"""`crystal train` says why no training structure is usable (a missing column: which, and the
columns that exist) and takes --threads (issue 15)."""

from __future__ import annotations

import csv

import pytest
import torch
from pymatgen.core import Lattice, Structure


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("CRYSTAL_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def _csv(path):
    cif = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "cif", "formation_energy_per_atom", "band_gap"])
        for k in range(3):
            w.writerow([f"m{k}", cif.to(fmt="cif"), -1.0 - k, 0.5 * k])


def test_missing_target_column_names_it_and_the_columns(tmp_path, capsys):
    from crystal_cli.main import main

    _csv(tmp_path / "data.csv")
    torch.set_num_threads(2)
    code = main(
        ["train", "-e", "cgcnn", "--train", str(tmp_path / "data.csv"), "-t", "heat", "-o", str(tmp_path / "run"),
         "--threads", "1", "-q"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert torch.get_num_threads() == 1  # --threads applied
    flat = " ".join(err.split())
    assert "no training structures" in flat and "all 3 row(s)" in flat
    assert "'heat'" in flat and "is missing" in flat
    assert "band_gap" in flat and "formation_energy_per_atom" in flat  # the columns that exist
    assert "data.columns" in flat


def test_no_rows_error_counts_reasons():
    from crystal import CrystalBatch
    from crystal.io import Failure
    from crystal_train.data import LabelledData, no_rows_error

    data = LabelledData(CrystalBatch.empty(), [Failure("a", "read", "bad CIF", "x.csv")] * 2)
    msg = str(no_rows_error(data, ["x.csv"]))
    assert "2 row(s): bad CIF" in msg and "x.csv" in msg
    assert "holds no rows" in str(no_rows_error(LabelledData(CrystalBatch.empty()), ["y.csv"]))
