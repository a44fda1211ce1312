"""Training engine: labelled data readers, splits, run configs, Lightning fit/resume.

Uses a tiny trainable encoder defined in ``test_trainable`` (mean of element embeddings),
so these tests exercise the engine, not a model. Real encoders are trained end to end in
``tests/test_train_cli.py`` and in each plugin's tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure
from support import SHARED
from test_trainable import MeanEmbeddingEncoder

from crystal.errors import ConfigError, StructureError
from crystal.targets import TargetSpec
from crystal_train import evaluate, fit, parse_train_config, read_labelled, split_indices
from crystal_train.config import load_train_config

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"reference data not found at {SHARED} (../shared/data)")

NACL = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_bad_rows_are_reported_not_dropped(tmp_path: Path) -> None:
    cif = NACL.to(fmt="cif")
    path = _csv(
        tmp_path / "d.csv",
        [
            {"material_id": "ok", "cif": cif, "e": "1.5"},
            {"material_id": "badcif", "cif": "data_x\n_cell_length_a 3\n", "e": "1.0"},
            {"material_id": "nan", "cif": cif, "e": "nan"},
            {"material_id": "text", "cif": cif, "e": "high"},
            {"material_id": "empty", "cif": cif, "e": ""},
        ],
    )
    data = read_labelled([path], [TargetSpec(name="e")])
    assert data.batch.ids == ["ok"] and torch.equal(
        data.batch.crystal_properties["e"], torch.tensor([1.5], dtype=torch.float64)
    )
    reasons = {f.id: (f.step, f.reason) for f in data.failures}
    assert set(reasons) == {"badcif", "nan", "text", "empty"}
    assert reasons["badcif"][0] == "read" and "row 3: field 'cif'" in reasons["badcif"][1]
    assert "NaN" in reasons["nan"][1] and "not a number" in reasons["text"][1]
    assert all(f.source == str(path) for f in data.failures)
    missing = read_labelled([path], [TargetSpec(name="gap")])
    assert len(missing.batch) == 0 and "field 'gap' (target 'gap') is missing" in missing.failures[0].reason
    with pytest.raises(StructureError, match="badcif"):
        read_labelled([path], [TargetSpec(name="e")], on_error="raise")


def test_classification_labels_checked(tmp_path: Path) -> None:
    cif = NACL.to(fmt="cif")
    path = _csv(tmp_path / "c.csv", [{"id": "a", "cif": cif, "m": "1"}, {"id": "b", "cif": cif, "m": "2"}])
    data = read_labelled([path], [TargetSpec(name="m", task="classification")])
    assert data.batch.ids == ["a"] and data.batch.crystal_properties["m"].dtype == torch.long
    assert "not an integer in 0..1" in data.failures[0].reason


@needs_shared
def test_id_prop_folders_with_and_without_header() -> None:
    cgcnn = read_labelled([SHARED / "cgcnn" / "sample-regression"], [TargetSpec(name="y")])
    assert len(cgcnn) == 10 and cgcnn.aliases == ["y <- target"]
    jarvis = read_labelled([SHARED / "jarvis_sample"], [TargetSpec(name="target")])
    assert len(jarvis) == 50 and not jarvis.failures  # 70 POSCARs, 50 labelled


@needs_shared
def test_extxyz_energy_and_forces_labels() -> None:
    specs = [TargetSpec(name="energy"), TargetSpec(name="forces", level="atom", dim=3)]
    data = read_labelled([SHARED / "mlearn" / "Si" / "test.xyz"], specs)
    b = data.batch
    assert len(b) > 20 and not data.failures
    assert b.crystal_properties["energy"].shape == (len(b),)
    assert b.atom_properties["forces"].shape == (b.num_nodes, 3)


def test_json_labels(tmp_path: Path) -> None:
    items = [{"id": "x", "structure": NACL.as_dict(), "gap": 4.2}, {"id": "y", "structure": {"bad": 1}, "gap": 1.0}]
    (tmp_path / "d.json").write_text(json.dumps(items))
    data = read_labelled([tmp_path / "d.json"], [TargetSpec(name="gap")])
    assert data.batch.ids == ["x"] and data.failures[0].id == "y"


def test_files_without_labels_are_rejected(tmp_path: Path) -> None:
    NACL.to(filename=str(tmp_path / "a.cif"))
    with pytest.raises(ConfigError, match="carries no target values"):
        read_labelled([tmp_path / "a.cif"], [TargetSpec(name="e")])


def test_split_indices_disjoint_and_seeded() -> None:
    a = split_indices(100, [0.1, 0.2], seed=3)
    assert [len(x) for x in a] == [70, 10, 20]
    assert len(set(torch.cat(a).tolist())) == 100
    assert all(torch.equal(x, y) for x, y in zip(a, split_indices(100, [0.1, 0.2], seed=3), strict=True))
    assert not torch.equal(a[1], split_indices(100, [0.1, 0.2], seed=4)[1])


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    base = {"encoder": "x", "targets": [{"name": "e"}], "data": {"train": ["a.csv"]}}
    with pytest.raises(ConfigError, match=r"field 'fit': .*momentum is only used by the sgd"):
        parse_train_config({**base, "fit": {"optimizer": "adam", "momentum": 0.9}}, "run.toml")
    # the tables of older run files, [optim] and [trainer], are read into [fit]
    with pytest.raises(ConfigError, match=r"field 'fit': .*momentum is only used by the sgd"):
        parse_train_config({**base, "optim": {"optimizer": "adam", "momentum": 0.9}}, "run.toml")
    with pytest.raises(ConfigError, match=r"run.toml: field 'fit.epochs': unknown field"):
        parse_train_config({**base, "trainer": {"epochs": 3}}, "run.toml")
    legacy = parse_train_config(
        {**base, "optim": {"lr": 0.01, "scheduler": "plateau", "gamma": 0.3}, "trainer": {"max_epochs": 4}}
    )
    assert (legacy.fit.lr, legacy.fit.plateau_factor, legacy.fit.max_epochs, legacy.fit.batch_size) == (
        0.01,
        0.3,
        4,
        64,
    )
    with pytest.raises(ConfigError, match=r"optim\.lr and fit\.lr are the same option"):
        parse_train_config({**base, "optim": {"lr": 0.01}, "fit": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="val_fraction is only used without val"):
        parse_train_config({**base, "data": {"train": ["a"], "val": ["b"], "val_fraction": 0.2}})
    with pytest.raises(ConfigError, match=r"model\.seed is set by the run"):
        parse_train_config({**base, "model": {"seed": 1}})
    (tmp_path / "run.toml").write_text(
        'encoder = "x"\noutput = "out"\n[[targets]]\nname = "e"\n[data]\ntrain = "d.csv"\n'
    )
    cfg = load_train_config(tmp_path / "run.toml", ["trainer.max_epochs=7", "fit.lr=0.01"])
    assert (
        cfg.fit.max_epochs == 7
        and cfg.fit.lr == 0.01
        and cfg.data.train == [str(tmp_path / "d.csv")]
        and cfg.output == str(tmp_path / "out")
    )


def _toy_data(n: int = 24):
    from crystal import CrystalBatch

    structures, values = [], []
    elements = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba"]
    for i in range(n):
        a, b = elements[i % 8], elements[(3 * i + 1) % 8]
        structures.append(Structure(Lattice.cubic(4.0 + 0.05 * i), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
        values.append(float(i % 8) + 0.3 * ((3 * i + 1) % 8))
    batch = CrystalBatch.from_structures(structures, [f"s{i}" for i in range(n)])
    batch.crystal_properties["y"] = torch.tensor(values, dtype=torch.float64)
    return batch


def test_fit_learns_and_resumes(tmp_path: Path) -> None:
    data = _toy_data()
    enc = MeanEmbeddingEncoder(targets=[{"name": "y"}], width=16)
    before = evaluate(enc, data)[1]["y_mae"]
    enc, info = fit(
        enc,
        data,
        data,
        {"lr": 0.05, "scheduler": "none", "max_epochs": 60, "batch_size": 8},
        output=tmp_path,
        quiet=True,
    )
    after = evaluate(enc, data)[1]["y_mae"]
    assert after < 0.25 * before, (before, after)
    assert info["epochs"] == 60 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 60 and float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    # resume to 70 epochs from last.ckpt: continues at epoch 61
    enc2 = MeanEmbeddingEncoder(targets=[{"name": "y"}], width=16)
    _, info2 = fit(
        enc2,
        data,
        data,
        {"lr": 0.05, "scheduler": "none", "max_epochs": 70, "batch_size": 8},
        output=tmp_path,
        resume=True,
        quiet=True,
        fit_normalizer=False,
    )
    assert info2["epochs"] == 70 and len(info2["history"]) == 10 and info2["history"][0]["epoch"] == 61
    with pytest.raises(ConfigError, match="cannot resume"):
        fit(enc2, data, None, {"max_epochs": 1}, output=tmp_path / "new", resume=True, quiet=True)


def test_fit_is_reproducible_with_a_seed() -> None:
    data = _toy_data(16)
    outs = []
    for _ in range(2):
        enc = MeanEmbeddingEncoder(targets=[{"name": "y"}], width=8, seed=0)
        fit(enc, data, None, {"max_epochs": 3, "batch_size": 4, "seed": 5}, quiet=True)
        outs.append(enc.predict(data)["y"])
    assert torch.equal(outs[0], outs[1])


def test_recompute_batchnorm_gives_exact_training_set_statistics() -> None:
    from torch import nn

    from crystal_train.engine import recompute_batchnorm

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(101, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, batch):
            return self.bn(self.embed(batch.atomic_numbers))

    data = _toy_data(24)
    net = Net().eval()
    assert recompute_batchnorm(net, data, batch_size=5) == 1
    h = net.embed(data.atomic_numbers).detach()
    torch.testing.assert_close(net.bn.running_mean, h.mean(0))
    torch.testing.assert_close(net.bn.running_var, h.var(0))
    assert not net.training and net.bn.momentum == 0.1
    with pytest.raises(ConfigError, match="has no BatchNorm layers"):
        fit(MeanEmbeddingEncoder(targets=[{"name": "y"}]), data, None, {"batchnorm_stats": "recompute"}, quiet=True)
