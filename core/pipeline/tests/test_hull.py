"""The ``hull`` step: formation energy and energy above the convex hull of reference phases
relaxed with the same potential (crystal_pipeline.hull).

The potential is a Lennard-Jones whose unlike pairs bind ``unlike`` times more strongly, so
that Cu-Ag compounds have negative formation energies; the hull values are checked against a
lower convex hull computed by hand from the same energies (not with pymatgen).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ase.build import bulk
from ase.collections import dcdft
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crystal import ConfigError
from crystal_pipeline import Pipeline, run_pipeline

POTENTIAL = '''
import torch
from pydantic import Field

from crystal.components import Potential, PotentialOutput
from crystal.neighbors import radius_graph
from crystal.testing.potentials import LennardJonesConfig


class PairConfig(LennardJonesConfig):
    unlike: float = Field(2.0, gt=0, description="epsilon factor of unlike pairs")


class PairLJ(Potential):
    """12-6 Lennard-Jones, epsilon times `unlike` for pairs of different elements."""

    name = "pair-lj"
    version = "1.0"
    Config = PairConfig
    consumes = "crystal"

    def compute(self, batch, *, forces=True, stress=True):
        cfg = self.config
        B = len(batch)
        if B == 0:
            return PotentialOutput.empty(batch, forces=forces, stress=stress)
        with torch.enable_grad():
            strain = torch.zeros((B, 3, 3), dtype=batch.dtype, device=batch.device, requires_grad=stress)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            deform = torch.eye(3, dtype=batch.dtype, device=batch.device) + sym
            pos = batch.cart_coords.detach().requires_grad_(forces)
            lat = batch.lattices @ deform
            pos_s = torch.einsum("ni,nij->nj", pos, deform[batch.batch])
            frac = torch.einsum("ni,nij->nj", pos_s, torch.linalg.inv(lat)[batch.batch])
            graph = radius_graph(batch.with_positions(frac, lat), cfg.cutoff)
            i, j = graph.edge_index
            z = batch.atomic_numbers
            eps = cfg.epsilon * torch.where(z[i] != z[j], cfg.unlike, 1.0).to(batch.dtype)
            sr6 = (cfg.sigma / graph.distances) ** 6
            src6 = (cfg.sigma / cfg.cutoff) ** 6
            pair = 4 * eps * ((sr6 * sr6 - sr6) - (src6 * src6 - src6))
            e_atom = torch.zeros(batch.num_nodes, dtype=batch.dtype, device=batch.device).index_add(0, i, 0.5 * pair)
            energy = torch.zeros(B, dtype=batch.dtype, device=batch.device).index_add(0, batch.batch, e_atom)
            inputs = [t for t, want in ((pos, forces), (strain, stress)) if want]
            grads = torch.autograd.grad(energy.sum(), inputs) if inputs else ()
        out = PotentialOutput(energy=energy.detach())
        k = 0
        if forces:
            out.forces = -grads[k]
            k += 1
        if stress:
            out.stress = grads[k] / batch.volumes[:, None, None]
        return out
'''

LJ = {"sigma": 2.3, "cutoff": 5.0, "epsilon": 0.1}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test starts with an empty reference cache."""
    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def pair_lj(fake_distribution):
    fake_distribution(
        "fake-pair-lj",
        {"crystal.potentials": {"pair-lj": "fake_pair_lj.pot:PairLJ"}},
        {"fake_pair_lj/__init__.py": "", "fake_pair_lj/pot.py": POTENTIAL},
    )


def _write(folder: Path, name: str, s: Structure) -> None:
    folder.mkdir(exist_ok=True)
    s.to(filename=str(folder / f"{name}.cif"))


def _cuag_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Candidates (CsCl CuAg, L1_2 Cu3Ag and CuAg3, fcc Cu) and one known phase (L1_0 CuAg)."""
    cand, known = tmp_path / "candidates", tmp_path / "known"
    _write(cand, "cuag", Structure(Lattice.cubic(2.9), ["Cu", "Ag"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    l12 = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    _write(cand, "cu3ag", Structure(Lattice.cubic(3.7), ["Ag", "Cu", "Cu", "Cu"], l12))
    _write(cand, "cuag3", Structure(Lattice.cubic(3.8), ["Cu", "Ag", "Ag", "Ag"], l12))
    _write(cand, "cu", AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.5)))
    _write(known, "cuag_l10", Structure(Lattice.tetragonal(2.6, 3.7), ["Cu", "Ag"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    return cand, known


def _pipeline(cand: Path, known: Path | None, *, hull: dict | None = None, relax: bool = True, lj=LJ) -> dict:
    steps = []
    if relax:
        steps.append({"id": "relax", "type": "relax", "potential": "pair-lj", "config": lj, "max_steps": 100})
    step = {"id": "hull", "type": "hull", "potential": "pair-lj", "config": lj, "max_steps": 150}
    if relax:
        step["energy_from"] = "relax"
    if known is not None:
        step["references"] = [str(known)]
    steps += [{**step, **(hull or {})}, {"id": "rank", "type": "rank", "by": "e_above_hull"}]
    return {
        "pipeline": {"name": "hull", "device": "cpu", "chunk_size": 8},
        "source": {"type": "files", "paths": [str(cand)]},
        "steps": steps,
        "sinks": [{"type": "csv", "path": "summary.csv"}],
    }


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _cache(manifest: dict) -> dict:
    return json.loads(Path(manifest["hull"]["cache"]).read_text())["entries"]


def _by_hand(entries: dict, formula: str, energy: float) -> tuple[float, float]:
    """(formation energy, energy above the lower convex hull) per atom of a Cu-Ag crystal,
    from the cached reference energies, with a hull computed by hand (binary: the lowest
    chord between two references bracketing its Ag fraction)."""
    mu = {}
    points = []
    for e in entries.values():
        c = Composition(e["formula"])
        if len(c.elements) == 1:
            el = str(c.elements[0])
            mu[el] = min(mu.get(el, 0.0), e["energy_per_atom"])
    for e in entries.values():
        c = Composition(e["formula"])
        x = c.get_atomic_fraction("Ag")
        form = e["energy_per_atom"] - sum(c.get_atomic_fraction(el) * m for el, m in mu.items())
        points.append((x, form))
    c = Composition(formula)
    x = c.get_atomic_fraction("Ag")
    form = energy / c.num_atoms - sum(c.get_atomic_fraction(el) * m for el, m in mu.items())
    hull = min(
        fa + (fb - fa) * (x - xa) / (xb - xa) if xb > xa else min(fa, fb)
        for xa, fa in points
        for xb, fb in points
        if xa <= x <= xb
    )
    return form, form - hull


def test_hull_values_ranking_and_manifest(tmp_path, pair_lj):
    cand, known = _cuag_inputs(tmp_path)
    res = run_pipeline(_pipeline(cand, known, hull={"stable_threshold": 0.05}), tmp_path / "run")
    summary = _rows(tmp_path / "run" / "summary.csv")
    assert {r["id"] for r in summary} == {"cuag", "cu3ag", "cuag3", "cu"}
    hull = [float(r["e_above_hull"]) for r in summary]
    assert hull == sorted(hull)  # ranked by energy above the hull
    manifest = res.manifest
    entries = _cache(manifest)
    # Cu and Ag of the Delta test, and the user's L1_0 CuAg
    sources = sorted((e["source"], e["id"]) for e in entries.values())
    assert sources == [
        (str(known / "cuag_l10.cif"), "cuag_l10"),
        ("ase.collections.dcdft", "Ag"),
        ("ase.collections.dcdft", "Cu"),
    ]
    assert {r["formula"] for r in manifest["hull"]["references"]} == {"Cu", "Ag", "CuAg"}
    assert manifest["hull"]["potential"] == "pair-lj" and manifest["hull"]["step"] == "hull"
    for r in summary:
        form, above = _by_hand(entries, r["formula"], float(r["energy"]))
        assert float(r["formation_energy_per_atom"]) == pytest.approx(form, abs=1e-5)
        assert float(r["e_above_hull"]) == pytest.approx(above, abs=1e-5)
        assert r["stable"] == ("1.0" if float(r["e_above_hull"]) <= 0.05 else "0.0")
    values = {r["id"]: float(r["formation_energy_per_atom"]) for r in summary}
    assert values["cu"] == pytest.approx(0.0, abs=0.02)  # fcc Cu relaxes to the reference Cu
    assert min(values.values()) < -0.05  # unlike pairs bind: a compound forms
    assert len({r["stable"] for r in summary}) == 2  # the threshold separates some


def _direct(step: dict, structures: dict[str, Structure], base_dir: Path):
    """The hull step run directly on ``structures`` (no pipeline around it): its output."""
    from crystal.batch import CrystalBatch
    from crystal.plugins import load_class
    from crystal_pipeline.config import HullStep
    from crystal_pipeline.hull import run_hull
    from crystal_pipeline.steps import StepContext

    hull = HullStep(**{"id": "hull", "type": "hull", "potential": "pair-lj", "config": LJ, **step})
    pot = load_class("potential", "pair-lj")(hull.config, device="cpu")
    ctx = StepContext(run_dir=base_dir, components={"hull": (pot,)}, base_dir=base_dir)
    batch = CrystalBatch.from_structures(list(structures.values()), list(structures))
    return hull, pot, run_hull(hull, batch, ctx)


def test_candidate_equal_to_a_reference_is_on_the_hull(tmp_path, pair_lj):
    """Single-point energies (no energy_from) of the references themselves, unrelaxed on both
    sides (max_steps = 0): elemental Cu and Ag have formation energy and e_above_hull 0, the
    L1_0 CuAg its by-hand values (0 above the hull: the only compound)."""
    from crystal_pipeline.hull import _cache_file

    known = tmp_path / "known"
    l10 = Structure(Lattice.tetragonal(2.6, 3.7), ["Cu", "Ag"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    _write(known, "cuag_l10", l10)
    crystals = {el.lower(): AseAtomsAdaptor.get_structure(dcdft[el]) for el in ("Cu", "Ag")}
    crystals["cuag_l10"] = l10
    step, pot, out = _direct({"max_steps": 0, "references": [str(known)]}, crystals, tmp_path)
    assert out.failures == []
    cols = out.batch.crystal_properties
    got = {
        i: (cols["formation_energy_per_atom"][k].item(), cols["e_above_hull"][k].item())
        for k, i in enumerate(out.batch.ids)
    }
    assert got["cu"] == pytest.approx((0.0, 0.0), abs=1e-9)
    assert got["ag"] == pytest.approx((0.0, 0.0), abs=1e-9)
    entries = json.loads(_cache_file(step, pot)[0].read_text())["entries"]
    (compound,) = [e for e in entries.values() if e["formula"] == "CuAg"]
    form, above = _by_hand(entries, "CuAg", compound["energy_per_atom"] * 2)
    assert form < 0 and above == pytest.approx(0.0, abs=1e-12)
    assert got["cuag_l10"] == pytest.approx((form, above), abs=1e-9)
    assert cols["stable"].tolist() == [1.0, 1.0, 1.0]


def test_reference_energies_are_cached_per_potential_and_settings(tmp_path, pair_lj, monkeypatch):
    import crystal_metrics.sun as sun
    from crystal_pipeline.hull import _needed, reference_energies

    cand, known = _cuag_inputs(tmp_path)
    calls: list[int] = []
    real = sun.relaxed_energies

    def counting(potential, structures, **kw):
        calls.append(len(structures))
        return real(potential, structures, **kw)

    monkeypatch.setattr(sun, "relaxed_energies", counting)
    first = run_pipeline(_pipeline(cand, known), tmp_path / "r1")
    assert calls == [3]  # Cu, Ag, CuAg: relaxed once, in one batch
    cache = Path(first.manifest["hull"]["cache"])
    assert cache.is_file() and cache.parent.parent == tmp_path / "cache" / "hull"
    assert cache.stat().st_mode & 0o044  # readable under the usual umask

    def forbidden(*a, **k):
        raise AssertionError("references relaxed again")

    monkeypatch.setattr(sun, "relaxed_energies", forbidden)
    second = run_pipeline(_pipeline(cand, known), tmp_path / "r2")  # same potential and settings: cached
    assert second.manifest["counts"]["ok"] == 4
    hull = second.batch.crystal_properties["e_above_hull"].tolist()
    assert hull == first.batch.crystal_properties["e_above_hull"].tolist()

    monkeypatch.setattr(sun, "relaxed_energies", counting)
    systems = [frozenset({"Cu", "Ag"})]
    base = {"references": [str(known)], "max_steps": 150}
    for change in ({}, {"config": {**LJ, "unlike": 1.5}}, {"fmax": 0.02}, {"max_steps": 149}):
        calls.clear()
        step, pot, _ = _direct({**base, **change}, {}, tmp_path)
        entries, errors, path = reference_energies(step, pot, _needed(step, tmp_path, systems))
        assert len(entries) == 3 and errors == {}
        if change:  # another potential config or reference setting: its own cache, computed again
            assert calls == [3] and path != cache
        else:  # what the pipeline cached
            assert calls == [] and path == cache
    calls.clear()
    step, pot, _ = _direct({"max_steps": 150}, {}, tmp_path)  # elements only: a subset, cached
    assert len(reference_energies(step, pot, _needed(step, tmp_path, systems))[0]) == 2 and calls == []


def test_element_without_reference_is_a_failure_row(tmp_path, pair_lj):
    cand, _ = _cuag_inputs(tmp_path)
    _write(cand, "lacu", Structure(Lattice.cubic(3.0), ["La", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    res = run_pipeline(_pipeline(cand, None), tmp_path / "run")
    rows = {r["id"]: r for r in _rows(tmp_path / "run" / "results.csv")}
    assert rows["lacu"]["status"] == "failed" and rows["lacu"]["step"] == "hull"
    assert "no elemental reference for La" in rows["lacu"]["reason"]
    assert sorted(res.batch.ids) == ["cu", "cu3ag", "cuag", "cuag3"]  # the rest of the chunk goes on
    # without elemental references, only the user's phases: Ag is missing
    crystals = {"cu": AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6))}
    crystals["cuag"] = Structure(Lattice.cubic(2.9), ["Cu", "Ag"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    _, _, out = _direct(
        {"elemental_references": "none", "references": [str(_known_cu(tmp_path))], "max_steps": 0}, crystals, tmp_path
    )
    assert out.batch.ids == ["cu"]
    ((ident, reason),) = [(f.id, f.reason) for f in out.failures]
    assert ident == "cuag" and "no elemental reference for Ag (elemental_references = 'none'" in reason


def _known_cu(tmp_path: Path) -> Path:
    folder = tmp_path / "known_cu"
    _write(folder, "cu", AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6)))
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"energy_from": "nope"}, "field 'energy_from': no earlier step 'nope' (earlier relax steps: relax)"),
        ({"energy_from": "m"}, "step 'm' is a metrics step, not a relax step"),
        ({"config": {"sigma": 2.0}}, "energies of different potentials cannot share a hull"),
        ({"elemental_references": "none"}, "no reference phases"),
        ({"stable_treshold": 0.1}, "stable_threshold"),
    ],
)
def test_config_errors(change, message):
    data = {
        "source": {"type": "files", "paths": ["x"]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": "pair-lj"},
            {"id": "m", "type": "metrics", "names": ["density"]},
            {"id": "hull", "type": "hull", "potential": "pair-lj", "energy_from": "relax", **change},
        ],
    }
    with pytest.raises(ConfigError, match="hull") as err:
        Pipeline.from_dict(data)
    assert message in str(err.value)


def test_md_between_relax_and_hull_is_refused():
    data = {
        "source": {"type": "files", "paths": ["x"]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": "p"},
            {"id": "md", "type": "md", "potential": "p", "steps": 10},
            {"id": "hull", "type": "hull", "potential": "p", "energy_from": "relax"},
        ],
    }
    with pytest.raises(ConfigError, match="step\\(s\\) md change the energy after 'relax'"):
        Pipeline.from_dict(data)


def test_validate_names_missing_reference_paths_and_datasets(tmp_path, pair_lj):
    cand, _ = _cuag_inputs(tmp_path)
    data = _pipeline(cand, None, hull={"references": ["missing/*.cif"], "reference_datasets": ["nope"]})
    with pytest.raises(ConfigError) as err:
        Pipeline.from_dict(data).check()
    text = str(err.value)
    assert "step 'hull': field 'references'" in text and "missing/*.cif" in text
    assert "field 'reference_datasets': no dataset 'nope'; allowed:" in text and "dcdft" in text


def test_unreadable_reference_file_is_a_config_error(tmp_path, pair_lj):
    known = tmp_path / "known"
    known.mkdir()
    (known / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    crystals = {"cu": AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6))}
    with pytest.raises(ConfigError, match=r"hull reference .*broken\.cif: cannot read"):
        _direct({"references": [str(known)], "max_steps": 0}, crystals, tmp_path)


def test_package_references_resolve_inside_the_installed_package(tmp_path) -> None:
    import crystal
    from crystal.errors import ConfigError
    from crystal_pipeline.hull import _resolve

    (got,) = _resolve(["package:crystal/py.typed"], tmp_path)
    assert Path(got).is_file() and Path(got).parent == Path(crystal.__file__).parent
    assert _resolve(["x.cif"], tmp_path) == [str(tmp_path / "x.cif")]
    with pytest.raises(ConfigError, match=r"'no-such\.cif' is missing from package 'crystal'"):
        _resolve(["package:crystal/no-such.cif"], tmp_path)
    with pytest.raises(ConfigError, match="package 'no_such_package' is not installed"):
        _resolve(["package:no_such_package/x"], tmp_path)
