"""Tests of crystal-example. Run them with ``pytest`` after ``pip install -e .``.

Every test here can fail: each one pins a number or a symmetry that a broken encoder
would violate (try changing AMU_PER_A3_IN_G_PER_CM3 or dropping the index_add_).
"""

from __future__ import annotations

import subprocess
import sys

import crystal
import pytest
import torch
from ase.build import bulk
from crystal import CrystalBatch
from crystal.testing import assert_invariant, permute, random_rotation, rotate, supercell, translate, unimodular_recell

from crystal_example.encoder import DensityEncoder


def _batch() -> CrystalBatch:
    atoms = [
        bulk("Cu", "fcc", a=3.61),  # primitive, 1 atom
        bulk("Si", "diamond", a=5.431, cubic=True),  # 8 atoms
        bulk("NaCl", "rocksalt", a=5.64),  # 2 atoms
    ]
    atoms[1].rattle(0.02, seed=1)  # break symmetry: the checks must not rely on it
    return CrystalBatch.from_atoms(atoms, ids=["Cu", "Si", "NaCl"])


def _density(batch: CrystalBatch) -> torch.Tensor:
    return DensityEncoder(device="cpu").predict(batch)["density"]


def test_density_of_copper_and_symmetries():
    batch = _batch()
    rho = _density(batch)
    # handbook values: Cu 8.96, Si 2.33, NaCl 2.17 g/cm^3
    assert rho[0].item() == pytest.approx(8.96, rel=0.02)
    assert rho[1].item() == pytest.approx(2.33, rel=0.02)
    assert rho[2].item() == pytest.approx(2.17, rel=0.02)
    # an intensive property: unchanged by supercells, rotations, translations,
    # other cell choices and atom order
    assert_invariant(_density, batch, lambda b: supercell(b, (2, 1, 3)), atol=1e-10)
    R = random_rotation(torch.Generator().manual_seed(0))
    assert_invariant(_density, batch, lambda b: rotate(b, R), atol=1e-10)
    assert_invariant(_density, batch, lambda b: translate(b, torch.tensor([0.3, -1.2, 2.0])), atol=1e-10)
    assert_invariant(_density, batch, unimodular_recell, atol=1e-10)
    assert_invariant(_density, batch, lambda b: permute(b, torch.Generator().manual_seed(1))[0], atol=1e-10)


def test_output_shape_dtype_and_empty_batch():
    enc = DensityEncoder(device="cpu")
    assert enc.targets == ("density",)
    out = enc.predict(_batch().to(dtype=torch.float32))
    assert set(out) == set(enc.targets)
    assert out["density"].shape == (3,)
    assert out["density"].dtype == torch.float32
    assert enc.predict(CrystalBatch.empty())["density"].shape == (0,)


def test_config_flag_changes_the_result_and_unknown_keys_fail():
    batch = _batch()
    standard = DensityEncoder(device="cpu").predict(batch)["density"]
    isotope = DensityEncoder({"masses": "isotope"}, device="cpu").predict(batch)["density"]
    # 63Cu (62.93 amu) is lighter than the natural mix (63.546 amu)
    assert isotope[0].item() == pytest.approx(standard[0].item() * 62.9296 / 63.546, rel=1e-5)
    with pytest.raises(crystal.ConfigError, match="unknown parameter"):
        DensityEncoder({"mases": "isotope"}, device="cpu")


def test_installed_plugin_is_discovered_and_honours_the_contract():
    from crystal.plugins import check_plugins, list_plugins
    from crystal.testing.contracts import check_plugin

    infos = [i for i in list_plugins("encoder") if i.name == "example-density"]
    assert infos, "crystal-example is not installed (pip install -e .)"
    assert infos[0].distribution == "crystal-example"
    assert infos[0].manifest_error is None
    (result,) = check_plugins(infos)
    assert result.ok, result.problems
    # the contract every encoder must honour: declarations match the manifest, declared
    # targets, shapes, finiteness, rotation/translation invariance, batched == one by one
    enc = check_plugin("encoder", "example-density")
    assert isinstance(enc, DensityEncoder)


def test_metric_hook():
    from crystal.hooks import reset_plugin_manager
    from crystal.registries import metrics

    reset_plugin_manager()  # pick up entry points of a freshly installed plugin
    spec = metrics()["mean_atomic_mass"]
    assert spec.unit == "amu"
    assert spec.compute(_batch()).tolist() == pytest.approx([63.546, 28.085, (22.98977 + 35.45) / 2], rel=1e-4)


def test_encoder_and_metric_in_a_pipeline(tmp_path):
    # pipelines are a battery (pip install crystal-pipeline): with crystal-core alone this test skips
    crystal_pipeline = pytest.importorskip("crystal_pipeline", reason="pipelines need crystal-pipeline")
    from crystal.hooks import reset_plugin_manager
    from pymatgen.io.ase import AseAtomsAdaptor

    reset_plugin_manager()  # pick up entry points of a freshly installed plugin

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k, atoms in enumerate(bulk(s, x, a=a) for s, x, a in [("Cu", "fcc", 3.61), ("Al", "fcc", 4.05)]):
        AseAtomsAdaptor.get_structure(atoms).to(filename=str(inputs / f"s{k}.cif"))
    result = crystal_pipeline.run_pipeline(
        {
            "source": {"type": "files", "paths": [str(inputs)]},
            "steps": [
                {"id": "rho", "type": "predict", "encoder": "example-density"},
                {"id": "m", "type": "metrics", "names": ["mean_atomic_mass"]},
            ],
        },
        tmp_path / "run",
    )
    rho = dict(zip(result.batch.ids, result.batch.crystal_properties["density"].tolist(), strict=True))
    assert rho["s0"] == pytest.approx(8.96, rel=0.02)
    assert rho["s1"] == pytest.approx(2.70, rel=0.02)
    assert (tmp_path / "run" / "results.csv").read_text().splitlines()[0].endswith("density,mean_atomic_mass")


def test_hook_module_is_light():
    code = "import sys, crystal_example.hooks; sys.exit('torch' in sys.modules or 'ase' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
