"""The trainable-encoder contract: build, predict, save → load, config clashes, elements."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from pymatgen.core import Lattice, Structure
from torch import nn

from crystal import CrystalBatch
from crystal.errors import ConfigError, StructureError, WeightsError
from crystal.targets import TargetSet, TargetSpec
from crystal.trainable import EncoderConfig, TrainableEncoder


class MeanEmbeddingConfig(EncoderConfig):
    width: int = Field(8, ge=1, description="embedding width")


class MeanEmbedding(nn.Module):
    """Mean of per-element embeddings → structure heads; per-atom heads from the embedding."""

    def __init__(self, width: int, targets: TargetSet) -> None:
        super().__init__()
        self.embed = nn.Embedding(101, width)
        self.structure_head = nn.Linear(width, targets.structure_width) if targets.structure_width else None
        self.atom_head = nn.Linear(width, targets.atom_width) if targets.atom_width else None

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        h = self.embed(batch.atomic_numbers)
        pooled = (
            torch.zeros(len(batch), h.shape[1], device=h.device).index_add_(0, batch.batch, h)
            / batch.num_atoms[:, None]
        )
        s = self.structure_head(pooled) if self.structure_head is not None else None
        a = self.atom_head(h) if self.atom_head is not None else None
        return s, a


class MeanEmbeddingEncoder(TrainableEncoder):
    name: ClassVar[str] = "mean-embedding"
    version: ClassVar[str] = "0.0.1"
    Config: ClassVar[type[EncoderConfig]] = MeanEmbeddingConfig

    @classmethod
    def build_model(cls, config: Any, targets: TargetSet) -> nn.Module:
        return MeanEmbedding(config.width, targets)


def _batch() -> CrystalBatch:
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return CrystalBatch.from_structures([nacl, si, nacl])


TARGETS = (
    {"name": "e", "unit": "eV"},
    {"name": "v", "dim": 3},
    {"name": "metal", "task": "classification"},
    {"name": "phase", "task": "classification", "num_classes": 4},
    {"name": "q", "level": "atom"},
)


def test_predict_shapes_and_layout() -> None:
    enc = MeanEmbeddingEncoder(targets=TARGETS)
    out = enc.predict(_batch())
    assert enc.targets == ("e", "v", "metal", "phase", "q")
    assert enc.target_set.structure_width == 1 + 3 + 2 + 4 and enc.target_set.atom_width == 1
    assert out["e"].shape == (3,) and out["v"].shape == (3, 3) and out["q"].shape == (6,)
    assert out["metal"].shape == (3,) and ((out["metal"] >= 0) & (out["metal"] <= 1)).all()
    assert torch.allclose(out["phase"].sum(-1), torch.ones(3))
    assert torch.allclose(out["e"][0], out["e"][2])  # same crystal, same prediction


def test_save_load_identical(tmp_path) -> None:
    enc = MeanEmbeddingEncoder(targets=TARGETS, width=5, seed=3)
    enc.target_set.fit_normalizer({"e": torch.tensor([1.0, 3.0]), "v": torch.randn(10, 3), "q": torch.randn(7)})
    digest = enc.save(tmp_path / "m.pt", metadata={"note": "test"})
    again = MeanEmbeddingEncoder(checkpoint=tmp_path / "m.pt", sha256=digest)
    assert again.config.width == 5 and again.metadata == {"note": "test"}
    a, b = enc.predict(_batch()), again.predict(_batch())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not list(tmp_path.glob("*.part"))


def test_checkpoint_errors(tmp_path) -> None:
    enc = MeanEmbeddingEncoder(width=4)
    enc.save(tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="sha256"):
        MeanEmbeddingEncoder(checkpoint=tmp_path / "m.pt", sha256="0" * 64)
    with pytest.raises(ConfigError, match="width come from the checkpoint"):
        MeanEmbeddingEncoder(checkpoint=tmp_path / "m.pt", width=6)
    with pytest.raises(ConfigError, match="does not exist"):
        MeanEmbeddingEncoder(checkpoint=tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a crystal encoder checkpoint"):
        MeanEmbeddingEncoder(checkpoint=tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="unknown weights"):
        MeanEmbeddingEncoder(weights="nope")


def test_unknown_element_is_named() -> None:
    enc = MeanEmbeddingEncoder()
    batch = _batch()
    batch.atomic_numbers[0] = 105
    with pytest.raises(StructureError, match=r"Db \(Z=105\)"):
        enc.predict(batch)


def test_target_spec_validation() -> None:
    with pytest.raises(ValueError, match="num_classes is only"):
        TargetSpec(name="x", num_classes=3)
    with pytest.raises(ValueError, match="cross_entropy"):
        TargetSpec(name="x", task="classification", loss="mse")
    with pytest.raises(ValueError, match="duplicate"):
        TargetSet([{"name": "a"}, {"name": "a"}])


def test_normalizer_and_loss() -> None:
    ts = TargetSet([{"name": "e"}, {"name": "c", "task": "classification"}])
    ts.fit_normalizer({"e": torch.tensor([1.0, 2.0, 3.0])})
    mean, std = ts.stats("e")
    assert float(mean) == pytest.approx(2.0) and float(std) == pytest.approx((2 / 3) ** 0.5)
    raw = {"e": ts.normalize("e", torch.tensor([1.0, 3.0])), "c": torch.tensor([[5.0, -5.0], [-5.0, 5.0]])}
    total, parts = ts.loss(raw, {"e": torch.tensor([1.0, 3.0]), "c": torch.tensor([0, 1])})
    assert float(parts["e"]) == pytest.approx(0.0, abs=1e-12) and float(parts["c"]) < 1e-3
    assert float(total) == pytest.approx(float(parts["e"] + parts["c"]))
    values = ts.denormalize(raw)
    assert torch.allclose(values["e"], torch.tensor([1.0, 3.0]))
    m = ts.metrics(values, {"e": torch.tensor([1.5, 3.0]), "c": torch.tensor([0, 0])})
    assert m["e_mae"] == pytest.approx(0.25) and m["c_accuracy"] == pytest.approx(0.5)


def test_untrained_model_warns_once_and_loaded_one_does_not(tmp_path) -> None:
    import warnings

    enc = MeanEmbeddingEncoder()
    with pytest.warns(UserWarning, match="no trained weights"):
        enc.predict(_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.predict(_batch())  # once per instance
        enc.save(tmp_path / "m.pt")
        MeanEmbeddingEncoder(checkpoint=tmp_path / "m.pt").predict(_batch())


def test_extensive_targets_scale_with_the_number_of_atoms() -> None:
    """``extensive=True``: per-atom normalisation, predictions times N (exact supercell scaling)."""
    from crystal.testing import supercell

    enc = MeanEmbeddingEncoder(targets=[{"name": "E", "unit": "eV", "extensive": True}, {"name": "g"}])
    batch = _batch()
    energies = torch.tensor([-10.0, -12.0, -10.0], dtype=torch.float64)
    enc.target_set.fit_normalizer({"E": energies, "g": torch.tensor([1.0, 2.0, 3.0])}, batch.num_atoms)
    mean, _ = enc.target_set.stats("E")
    assert float(mean) == pytest.approx(float((energies / 2).mean()))  # statistics of E/N
    big = supercell(batch, (2, 1, 1))
    a, b = enc.predict(batch), enc.predict(big)
    torch.testing.assert_close(b["E"], 2 * a["E"])
    torch.testing.assert_close(b["g"], a["g"])  # intensive: unchanged
    raw = enc.net(batch)
    _, parts = enc.target_set.loss(raw, {"E": a["E"].double(), "g": a["g"].double()}, batch.num_atoms)
    assert float(parts["E"]) < 1e-10  # its own predictions have zero loss
    with pytest.raises(ValueError, match="num_atoms is needed"):
        enc.target_set.denormalize(raw)
    with pytest.raises(ValueError, match="structure-level regression"):
        TargetSpec(name="x", level="atom", extensive=True)
