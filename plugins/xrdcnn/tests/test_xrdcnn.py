"""crystal-xrdcnn: labels, network, training, checkpoints, the component and shipped weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, WeightsError
from crystal_xrdcnn.characterizer import XRDCNNCharacterizer, load_checkpoint, save_checkpoint
from crystal_xrdcnn.labels import (
    CRYSTAL_SYSTEMS,
    HEADS,
    crystal_system_index,
    extinction_table,
    head_labels,
    label_batch,
    targets_from_space_groups,
)
from crystal_xrdcnn.model import XRDCNN, NetConfig

SMALL = {"input_pool": 8, "channels": (8, 16), "kernels": (9, 7), "hidden": 32, "dropout": 0.1}


def test_heads_and_label_spaces() -> None:
    assert [len(head_labels(h)) for h in HEADS] == [7, 112, 230]
    assert head_labels("space_group")[224] == "Fm-3m (#225)"
    with pytest.raises(ConfigError, match="unknown head"):
        head_labels("lattice")


def test_extinction_groups_are_consistent() -> None:
    table = extinction_table()
    of = table["extinction_group_of"]
    assert len(of) == 230 and set(of) == set(range(112))
    for g in range(112):
        members = [sg for sg in range(1, 231) if of[sg - 1] == g]
        assert len({crystal_system_index(sg) for sg in members}) == 1  # never across crystal systems
    # same reflection conditions -> same extinction group; different -> different
    assert of[225 - 1] == of[196 - 1] == of[216 - 1]  # Fm-3m, F23, F-43m: F---
    assert of[198 - 1] == of[208 - 1]  # P2_13, P4_232: 00l l=2n only
    assert of[221 - 1] != of[224 - 1]  # Pm-3m vs Pn-3m
    assert of[14 - 1] != of[11 - 1]  # P2_1/c vs P2_1/m
    assert of[1 - 1] == of[2 - 1]  # P1, P-1


@pytest.mark.slow
def test_shipped_extinction_table_matches_recomputation() -> None:
    from crystal_xrdcnn.labels import compute_extinction_table

    assert compute_extinction_table() == extinction_table()


def test_targets_and_spglib_labels(textbook) -> None:
    t = targets_from_space_groups(torch.tensor([1, 15, 16, 136, 166, 194, 225]))
    assert t["crystal_system"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert t["space_group"].tolist() == [0, 14, 15, 135, 165, 193, 224]
    assert [c[0] for c in CRYSTAL_SYSTEMS][6] == "cubic"
    nacl, rutile = textbook
    b = CrystalBatch.from_structures([nacl, rutile, nacl.get_primitive_structure()])
    assert label_batch(b).tolist() == [225, 136, 225]


def test_network_shapes_and_size() -> None:
    net = XRDCNN(NetConfig(input_points=4251, input_pool=4, kernels=(21, 15, 11, 7)))
    out = net(torch.rand(3, 4251))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "crystal_system": (3, 7),
        "extinction_group": (3, 112),
        "space_group": (3, 230),
    }
    assert sum(p.numel() for p in net.parameters()) * 4 < 5e6  # < 5 MB as float32
    # input scale does not matter (patterns are max-normalised inside)
    x = torch.rand(2, 4251)
    net.eval()
    assert torch.allclose(net(x)["space_group"], net(7.0 * x)["space_group"], atol=1e-5)


AUG = {"shift": 0.05, "strain": 0.005, "fwhm_range": (0.08, 0.2), "noise": 0.005}


def test_classifier_learns_a_tiny_set_and_beats_chance(tiny_batches) -> None:
    """The network's own loss, 50 Adam steps on 96 patterns of 4 crystal systems (fast)."""
    from crystal_xrd import XRDConfig
    from crystal_xrdcnn.train import simulate_targets

    train, test = tiny_batches
    xrd = XRDConfig(augment=AUG)
    data = simulate_targets(train, xrd, seed=0)
    held_out = simulate_targets(test, xrd, seed=1)
    torch.manual_seed(0)
    net = XRDCNN(NetConfig(input_points=4251, **SMALL))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        net.train()
        out = net.training_loss(data)
        first = float(out["loss"].detach()) if first is None else first
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(out["loss"].detach()) < 0.5 * first
    net.eval()
    with torch.no_grad():
        acc = (net(held_out[0])["crystal_system"].argmax(1) == held_out[1]).float().mean().item()
    assert acc >= 0.6, f"crystal-system accuracy {acc:.2f} on held-out structures (chance 0.25)"


@pytest.mark.slow
def test_training_recipe_with_fit_model_beats_chance(tiny_batches, tmp_path: Path) -> None:
    """``crystal_xrdcnn.train.fit`` (shared loop, on-the-fly augmented simulation) on the tiny set."""
    from crystal_xrd import XRDConfig
    from crystal_xrdcnn.train import fit, simulate_targets

    train, test = tiny_batches
    net, grid, history = fit(
        train,
        epochs=30,
        batch_size=16,
        lr=3e-3,
        val_fraction=0.0,
        seed=0,
        net_config=NetConfig(input_points=4251, **SMALL),
        augment=AUG,
        run_dir=tmp_path / "run",
    )
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert (tmp_path / "run" / "metrics.csv").is_file()
    signals, cs, _, _ = simulate_targets(test, XRDConfig(augment=AUG), seed=123)
    probs = XRDCNNCharacterizer.from_network(net, grid).characterize(signals)
    acc = (probs["crystal_system"].argmax(1) == cs).float().mean().item()
    assert acc >= 0.6, f"crystal-system accuracy {acc:.2f} on held-out structures (chance 0.25)"
    assert torch.allclose(probs["space_group"].sum(1), torch.ones(len(test)), atol=1e-5)


def test_save_load_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = XRDCNN(NetConfig(input_points=4251, **SMALL)).eval()
    grid = {"wavelength": "CuKa", "two_theta_min": 5.0, "two_theta_max": 90.0, "step": 0.02}
    path = tmp_path / "m.pt"
    save_checkpoint(path, net, grid, {"note": "test"})
    x = torch.rand(4, 4251)
    before = XRDCNNCharacterizer.from_network(net, grid).characterize(x)
    comp = XRDCNNCharacterizer({"weights": None, "checkpoint": path}, device="cpu")
    after = comp.characterize(x)
    for h in HEADS:
        assert torch.equal(before[h], after[h])
    assert comp.metadata == {"note": "test"} and comp.representation_config == grid
    _, _, _, digest = load_checkpoint(path)
    assert XRDCNNCharacterizer({"weights": None, "checkpoint": path, "sha256": digest}).checkpoint_sha256 == digest
    with pytest.raises(WeightsError, match="expected"):
        XRDCNNCharacterizer({"weights": None, "checkpoint": path, "sha256": "0" * 64})
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"bad\.pt: refused to load: it is not a PyTorch checkpoint"):
        XRDCNNCharacterizer({"weights": None, "checkpoint": tmp_path / "bad.pt"})
    with pytest.raises(ConfigError, match="does not exist"):
        XRDCNNCharacterizer({"weights": None, "checkpoint": tmp_path / "absent.pt"})


def test_characterize_rejects_wrong_grid() -> None:
    comp = XRDCNNCharacterizer({"weights": None}, device="cpu")
    with pytest.raises(ConfigError, match=r"\(B, 4251\).*5.0–90.0° step 0.02°"):
        comp.characterize(torch.rand(2, 1000))
    with pytest.raises(ConfigError, match="NaN"):
        comp.characterize(torch.full((1, 4251), float("nan")))
    with pytest.raises(ConfigError, match="unknown parameter"):
        XRDCNNCharacterizer({"weights": None, "layers": 3})


def _shipped() -> XRDCNNCharacterizer:
    return XRDCNNCharacterizer(device="cpu")  # the default shipped weights must load


def test_shipped_weights_load_and_classify_textbook_structures(textbook) -> None:
    from crystal_xrd import simulate

    comp = _shipped()
    assert comp.checkpoint_sha256 is not None and comp.weights_in_use() == ("xrdcnn-pyxtal230",)
    b = CrystalBatch.from_structures(list(textbook))
    probs = comp.characterize(simulate(b, comp.representation_config).patterns)
    top5 = probs["crystal_system"].topk(2, dim=1).indices.tolist()
    assert 6 in top5[0] and 3 in top5[1]  # cubic, tetragonal among the two best guesses
