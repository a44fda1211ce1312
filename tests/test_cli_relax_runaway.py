"""`crystal relax` turns a runaway crystal into a failure row quickly and takes
--max-volume-factor (issue 15)."""

from __future__ import annotations

import csv
import time

import pytest
import torch
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

POTENTIAL = """
import torch

from crystal.testing.potentials import LennardJones


class FlippedForKr(LennardJones):
    name = "flipped-kr-lj"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None:
            kr = torch.zeros(len(batch), dtype=torch.long).index_add_(
                0, batch.batch, (batch.atomic_numbers == 36).long()
            )
            out.stress = torch.where((kr > 0)[:, None, None], -out.stress, out.stress)
        return out
"""


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("CRYSTAL_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_crystal_relax_reports_the_runaway_crystal(tmp_path, fake_distribution, capsys):
    from crystal_cli.main import main

    fake_distribution(
        "fake-runaway-cli",
        {"crystal.potentials": {"flipped-kr-lj": "fake_runaway_cli.pot:FlippedForKr"}},
        {"fake_runaway_cli/__init__.py": "", "fake_runaway_cli/pot.py": POTENTIAL},
    )
    (tmp_path / "in").mkdir()
    for name, symbol, a in (("ar", "Ar", 5.3), ("kr", "Kr", 5.0)):
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        atoms.rattle(0.02, seed=1)
        (tmp_path / "in" / f"{name}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(atoms))))
    start = time.perf_counter()
    code = main(
        ["relax", str(tmp_path / "in"), "-p", "flipped-kr-lj", "-c", "cutoff=6.0", "-o", str(tmp_path / "run"),
         "--max-volume-factor", "1.5", "--threads", "1", "-q"]
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert code in (0, 1), capsys.readouterr().err
    assert elapsed < 10.0, elapsed
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "run" / "failures.csv").open())}
    assert set(rows) == {"kr"}
    assert "max_volume_factor=1.5" in rows["kr"]["reason"]
