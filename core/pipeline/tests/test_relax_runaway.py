"""A relax step turns a runaway crystal (here a flipped stress collapsing a 4-atom cell) into a
failure row with its reason, in well under 10 s, while the other crystals go on (issue 15)."""

from __future__ import annotations

import csv
import time

from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from crystal_pipeline import run_pipeline
from crystal_pipeline.config import RelaxStep
from crystal_sim.relax import RelaxConfig

POTENTIALS = """
from crystal.testing.potentials import LennardJones


class FlippedStress(LennardJones):
    name = "flipped-stress-lj"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None and (batch.atomic_numbers == 36).any():  # krypton crystals only
            kr = (batch.atomic_numbers == 36).double().new_zeros(len(batch)).index_add_(
                0, batch.batch, (batch.atomic_numbers == 36).double()
            ) > 0
            out.stress = out.stress * (1 - 2 * kr.to(out.stress.dtype))[:, None, None]
        return out
"""


def test_runaway_relaxation_is_a_failure_row(tmp_path, fake_distribution):
    fake_distribution(
        "fake-runaway",
        {"crystal.potentials": {"flipped-stress-lj": "fake_runaway.pot:FlippedStress"}},
        {"fake_runaway/__init__.py": "", "fake_runaway/pot.py": POTENTIALS},
    )
    (tmp_path / "in").mkdir()
    for name, symbol, a in (("ar", "Ar", 5.3), ("kr", "Kr", 5.0)):
        atoms = bulk(symbol, "fcc", a=a, cubic=True)  # 4 atoms
        atoms.rattle(0.02, seed=1)
        (tmp_path / "in" / f"{name}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(atoms))))
    data = {
        "pipeline": {"name": "runaway", "device": "cpu"},
        "source": {"type": "files", "paths": [str(tmp_path / "in")]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": "flipped-stress-lj", "config": {"cutoff": 6.0}, "fmax": 0.05}
        ],
        "sinks": [{"type": "csv", "path": "summary.csv"}],
    }
    start = time.perf_counter()
    res = run_pipeline(data, tmp_path / "run")
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, elapsed
    assert res.batch.ids == ["ar"]
    (failure,) = res.failures
    assert failure.id == "kr" and failure.step == "relax"
    assert "relaxation stopped at FIRE step" in failure.reason and "flipped-stress-lj" in failure.reason
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "run" / "results.csv").open())}
    assert rows["kr"]["status"] == "failed" and rows["ar"]["status"] == "ok"


def test_relax_step_has_the_sanity_bounds_of_relax_config():
    step = RelaxStep(id="r", type="relax", potential="x")
    for name in ("max_volume_factor", "max_energy_rise_per_atom", "max_energy_drop_per_atom"):
        assert getattr(step, name) == RelaxConfig.model_fields[name].default
    assert step.model_copy(update={"max_volume_factor": 2.0}).relax_config().max_volume_factor == 2.0
