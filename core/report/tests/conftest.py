"""Run directories for the report tests: written by hand (fast) or by a real pipeline run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

#: lattice constants (Å) of the test crystals, the references of the XRD checks
A_NACL, A_SI, A_CSCL = 5.64, 5.43, 4.12


_FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def _shift(points: list[list[float]], by: list[float]) -> list[list[float]]:
    return [[(p[i] + by[i]) % 1 for i in range(3)] for p in points]


def _structures() -> dict:
    """Conventional cells written out site by site (``Structure.from_spacegroup`` costs seconds)."""
    from pymatgen.core import Lattice, Structure

    return {
        "nacl": Structure(Lattice.cubic(A_NACL), ["Na"] * 4 + ["Cl"] * 4, _FCC + _shift(_FCC, [0.5, 0, 0])),
        "si": Structure(Lattice.cubic(A_SI), ["Si"] * 8, _FCC + _shift(_FCC, [0.25, 0.25, 0.25])),
        "cscl": Structure(Lattice.cubic(A_CSCL), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def handmade_run(tmp_path: Path) -> Path:
    """A pipeline run directory as the runner writes it: manifest, results, failures, a ranked
    summary.csv (rank 1 = cscl, 2 = nacl, 3 = si, file order shuffled) and a CIF folder."""
    from pymatgen.io.cif import CifWriter

    run = tmp_path / "run"
    (run / "structures").mkdir(parents=True)
    for ident, s in _structures().items():
        (run / "structures" / f"{ident}.cif").write_text(str(CifWriter(s)))
    config = {
        "pipeline": {"name": "handmade"},
        "source": {"type": "files", "paths": ["in"]},
        "steps": [
            {"id": "m", "type": "metrics", "names": ["volume_per_atom", "density"]},
            {"id": "rank", "type": "rank", "by": "density", "descending": True, "top": None},
        ],
        "sinks": [{"type": "cif", "path": "structures"}, {"type": "csv", "path": "summary.csv"}],
    }
    manifest = {
        "pipeline": "handmade",
        "config": config,
        "status": "complete",
        "device": "cpu",
        "counts": {"inputs": 4, "ok": 3, "failed": 1},
        "timings_s": {"total": 1.5},
        "plugins": [],
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    header = ["rank", "id", "formula", "num_atoms", "volume_per_atom", "density", "band_gap"]
    _write_csv(
        run / "summary.csv",
        header,
        [
            [3, "si", "Si8", 8, 20.02, 2.33, 0.6],
            [1, "cscl", "CsCl", 2, 34.97, 3.99, 5.1],
            [2, "nacl", "Na4Cl4", 8, 22.43, 2.16, 4.3],
        ],
    )
    (run / "summary.units.csv").write_text("column,unit\nrank,\nid,\nformula,\nnum_atoms,atoms\nband_gap,eV\n")
    (run / "results.units.json").write_text(json.dumps({"units": {"band_gap": "meV"}}))  # a later source: loses
    _write_csv(
        run / "results.csv",
        ["id", "status", "step", "reason", "source", "formula", "volume_per_atom", "density", "band_gap"],
        [
            ["nacl", "ok", "", "", "in/nacl.cif", "Na4Cl4", 22.43, 2.16, 4.3],
            ["si", "ok", "", "", "in/si.cif", "Si8", 20.02, 2.33, 0.6],
            ["cscl", "ok", "", "", "in/cscl.cif", "CsCl", 34.97, 3.99, 5.1],
            ["bad", "failed", "read", "file is empty", "in/bad.cif", "", "", "", ""],
        ],
    )
    _write_csv(
        run / "failures.csv",
        ["id", "status", "step", "reason", "source"],
        [["bad", "failed", "read", "file is empty", "in/bad.cif"]],
    )
    return run


@pytest.fixture
def crystals() -> dict:
    """NaCl, Si and CsCl (pymatgen, conventional cells) by id."""
    return _structures()


@pytest.fixture
def pipeline_run(tmp_path: Path) -> Path:
    """A real run: three crystals read from CIFs, metrics, ranked by density, CIF and CSV sinks."""
    from pymatgen.io.cif import CifWriter

    from crystal_pipeline import run_pipeline

    inputs = tmp_path / "in"
    inputs.mkdir()
    for ident, s in _structures().items():
        (inputs / f"{ident}.cif").write_text(str(CifWriter(s)))
    (inputs / "empty.cif").write_text("")
    config = {
        "pipeline": {"name": "report-test", "device": "cpu"},
        "source": {"type": "files", "paths": [str(inputs)]},
        "steps": [
            {"id": "m", "type": "metrics", "names": ["volume_per_atom", "density", "min_distance"]},
            {"id": "rank", "type": "rank", "by": "density", "descending": True},
        ],
        "sinks": [{"type": "cif", "path": "structures"}, {"type": "csv", "path": "summary.csv"}],
    }
    run_pipeline(config, tmp_path / "run")
    return tmp_path / "run"
