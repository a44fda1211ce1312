"""Tests of the crystal-cgcnn encoder plugin (CPU; about 10 s on 2 cores).

Golden parity and the checkpoint tests need ``../shared/data/cgcnn`` (the published
checkpoints, the 10 sample CIFs and the original code's predictions); they are skipped
with a reason where it is absent. Tolerances: the network runs in float32 like the
original, so float32 round-off (measured <= 1e-6 on these data) sets them, not float64.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.testing import permute, random_rotation, rotate, supercell, translate
from crystal.testing.contracts import check_plugin, sample_batch
from crystal_cgcnn.encoder import CGCNNEncoder

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data" / "cgcnn"
SAMPLES = DATA / "sample-regression"

# sha256 of the published checkpoints (txie-93/cgcnn, pre-trained/), as distributed
PUBLISHED_SHA256 = {
    "band-gap": "d269775b9be0995c046abed3dd6556c281a3eff7b2e1d73cf81b99e2a1d4aa6c",
    "bulk-moduli": "0a3f66b9a0ee6acef11bb852717424a6c3560073239c17bdbea568cc43816dd3",
    "efermi": "5ed4ba15b5bd3e04ce6b0eca75f15bb6465557aada4097f11291ea1e7cd48afb",
    "final-energy-per-atom": "1afe9260a0b7bd01d2a0a752fbac12be5badea6a56e57aeea5877ae8f9a32c57",
    "formation-energy-per-atom": "e2f8bb910744f2c2f21d968285b6fd4316d795d0f3e7465ed0e3b4f3c92651a1",
    "poisson-ratio": "8d152338550b49ff6c3790cccdb892ee8bafe513bc49ab21955cdf7807e89513",
    "semi-metal-classification": "3791d48885afafb28c0797e22637b63ea591cf7fb27497ce537911261b92edc8",
    "shear-moduli": "34173bc59a0a8f9f74021155b304b74d9e709b1ff241d3f02e83031c9deb216c",
}
ATOM_INIT_SHA256 = "cb90bd2257dbf8cfc4e6b2b6d4348d4616e8e9680f1339b1461137032e0f1894"

HAVE_DATA = all((DATA / d).is_dir() for d in ("pre-trained", "golden", "sample-regression"))
_skip_no_data = pytest.mark.skipif(
    not HAVE_DATA,
    reason=f"CGCNN reference data not found at {DATA} (../shared/data/cgcnn: published checkpoints, "
    "sample CIFs and the original code's golden predictions)",
)


def needs_data(fn):
    return pytest.mark.shared_data(_skip_no_data(fn))


def _encoder(model: str, **kw) -> CGCNNEncoder:
    return CGCNNEncoder(
        checkpoint=DATA / "pre-trained" / f"{model}.pth.tar",
        sha256=PUBLISHED_SHA256[model],
        atom_init=SAMPLES / "atom_init.json",
        atom_init_sha256=ATOM_INIT_SHA256,
        device="cpu",
        **kw,
    )


@pytest.fixture(scope="module")
def cifs() -> CrystalBatch:
    from pymatgen.core import Structure

    ids = [row[0] for row in csv.reader((SAMPLES / "id_prop.csv").open())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen: "fractional coordinates rounded to ideal values"
        structures = [Structure.from_file(SAMPLES / f"{i}.cif") for i in ids]
    return CrystalBatch.from_structures(structures, ids=ids)


@pytest.fixture(scope="module")
def random_encoder() -> CGCNNEncoder:
    return CGCNNEncoder(device="cpu")


# ---------------------------------------------------------------------- golden parity
@pytest.mark.parametrize("model", sorted(PUBLISHED_SHA256))
@needs_data
def test_golden_parity(model: str, cifs: CrystalBatch) -> None:
    batch = cifs
    rows = list(csv.reader((DATA / "golden" / f"{model}.csv").open()))[1:]
    golden = {cif_id: float(value) for cif_id, value in rows}
    expected = torch.tensor([golden[i] for i in batch.ids], dtype=torch.float64)
    enc = _encoder(model, target=model)
    assert enc.targets == (model,)
    got = enc.predict(batch)[model]
    assert got.shape == (len(batch),)
    dev = (got.double() - expected).abs().max().item()
    # measured: <= 9.6e-7 on every model (float32 round-off)
    assert dev < 1e-4, f"{model}: max |prediction - golden| = {dev:.3e}"


# ---------------------------------------------------------------------- invariances
TRANSFORMS = {
    "rotation": lambda b: rotate(b, random_rotation(torch.Generator().manual_seed(3), dtype=b.dtype)),
    "translation": lambda b: translate(b, torch.tensor([0.3, -1.2, 2.5])),
    "permutation": lambda b: permute(b, torch.Generator().manual_seed(4))[0],
    "supercell 2x2x1": lambda b: supercell(b, (2, 2, 1)),
}


@pytest.mark.parametrize("model", ["formation-energy-per-atom", "semi-metal-classification"])
@needs_data
def test_invariances_checkpoint(model: str, cifs: CrystalBatch) -> None:
    """Measured <= 1e-6 on the 10 sample CIFs: ties at the 12-neighbour cut there are only
    between equivalent atoms, so the neighbour choice does not change the prediction."""
    batch = cifs
    enc = _encoder(model)
    ref = enc.predict(batch)["prediction"].double()
    for label, fn in TRANSFORMS.items():
        got = enc.predict(fn(batch))["prediction"].double()
        dev = (got - ref).abs().max().item()
        assert dev < 1e-5, f"{model}: {label} changes predictions by {dev:.3e}"


def test_invariances_random_model(random_encoder: CGCNNEncoder) -> None:
    batch = sample_batch()
    ref = random_encoder.predict(batch)["prediction"].double()
    for label, fn in TRANSFORMS.items():
        got = random_encoder.predict(fn(batch))["prediction"].double()
        dev = (got - ref).abs().max().item()
        assert dev < 1e-5, f"{label} changes predictions by {dev:.3e}"


# ---------------------------------------------------------------------- batching
@needs_data
def test_batched_equals_one_by_one_checkpoint(cifs: CrystalBatch) -> None:
    batch = cifs
    enc = _encoder("band-gap")
    full = enc.predict(batch)["prediction"]
    singles = torch.cat([enc.predict(batch.select([i]))["prediction"] for i in range(len(batch))])
    assert (full - singles).abs().max().item() < 1e-5


def test_batched_equals_one_by_one_random(random_encoder: CGCNNEncoder) -> None:
    batch = sample_batch()
    full = random_encoder.predict(batch)["prediction"]
    singles = torch.cat([random_encoder.predict(batch.select([i]))["prediction"] for i in range(len(batch))])
    assert full.shape == (3,) and full.dtype == torch.float32
    assert (full - singles).abs().max().item() < 1e-5


def test_empty_batch(random_encoder: CGCNNEncoder) -> None:
    assert random_encoder.predict(CrystalBatch.empty())["prediction"].shape == (0,)


def test_padding_when_too_few_neighbours() -> None:
    """A 2-atom cell with a 3 Å cutoff has fewer than 12 neighbours per atom: padded like the
    original (neighbour 0 of the crystal at radius + 1), still finite and batch-independent."""
    from ase import Atoms

    from crystal_cgcnn.model import nearest_neighbours

    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[5.6, 6.0, 6.5], pbc=True)
    batch = CrystalBatch.from_atoms([atoms, atoms.copy()])
    g = nearest_neighbours(batch, 3.0, 12)
    assert g.index.shape == (4, 12)
    assert torch.equal(g.distance[:, 2:], torch.full((4, 10), 4.0, dtype=g.distance.dtype))
    assert g.index[2:, 2:].eq(2).all() and g.index[:2, 2:].eq(0).all()
    enc = CGCNNEncoder(radius=3.0, device="cpu")
    out = enc.predict(batch)["prediction"]
    assert torch.isfinite(out).all() and abs(out[0] - out[1]) < 1e-6


# ---------------------------------------------------------------------- config / errors
def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        CGCNNEncoder(device="cpu", n_convs=3)


def test_config_consistency() -> None:
    with pytest.raises(ConfigError, match="sha256"):
        CGCNNEncoder(device="cpu", checkpoint="model.pth.tar", atom_init="atom_init.json")
    with pytest.raises(ConfigError, match="atom_init"):
        CGCNNEncoder(device="cpu", checkpoint="model.pth.tar", sha256="0" * 64)
    with pytest.raises(ConfigError, match="n_conv"):
        CGCNNEncoder(device="cpu", checkpoint="m.pth.tar", sha256="0" * 64, atom_init="a.json", n_conv=2)
    with pytest.raises(ConfigError, match="sha256"):
        CGCNNEncoder(device="cpu", sha256="0" * 64)


@needs_data
def test_checksum_mismatch() -> None:
    with pytest.raises(WeightsError, match="sha256"):
        CGCNNEncoder(
            device="cpu",
            checkpoint=DATA / "pre-trained" / "band-gap.pth.tar",
            sha256=PUBLISHED_SHA256["efermi"],
            atom_init=SAMPLES / "atom_init.json",
        )


def _with_element(z: int) -> CrystalBatch:
    batch = sample_batch()
    zs = batch.atomic_numbers.clone()
    zs[0] = z
    return CrystalBatch(
        atomic_numbers=zs, frac_coords=batch.frac_coords, lattices=batch.lattices, num_atoms=batch.num_atoms
    )


@needs_data
def test_element_without_features_checkpoint() -> None:
    """The published atom_init.json covers Z = 1-100; Md (Z = 101) has no features."""
    enc = _encoder("band-gap")
    with pytest.raises(StructureError, match=r"Md \(Z=101\)"):
        enc.predict(_with_element(101))


def test_element_without_features_random(random_encoder: CGCNNEncoder) -> None:
    with pytest.raises(StructureError, match=r"Md \(Z=101\)"):
        random_encoder.predict(_with_element(101))


def test_seeded_and_deterministic(random_encoder: CGCNNEncoder) -> None:
    batch = sample_batch()
    a = random_encoder.predict(batch)["prediction"]
    b = CGCNNEncoder(device="cpu", seed=0).predict(batch)["prediction"]
    c = CGCNNEncoder(device="cpu", seed=1).predict(batch)["prediction"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_derived_features_shape() -> None:
    from crystal_cgcnn.features import derived_atom_features

    table, known = derived_atom_features()
    assert table.shape == (101, 93) and known[1:].all() and not known[0]
    # every element gets its group, period and block one-hots at least
    assert (table[1:].sum(dim=1) >= 3).all()


# ---------------------------------------------------------------------- plugin
def test_contract() -> None:
    check_plugin("encoder", "cgcnn")


def test_import_does_not_import_torch() -> None:
    code = "import sys, crystal_cgcnn; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
