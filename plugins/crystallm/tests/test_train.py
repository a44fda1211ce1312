"""The training command: CSV → canonical tokens → fit_model → checkpoint + model card."""

from __future__ import annotations

import csv
import json

import pytest

from crystal.errors import ConfigError
from crystal_crystallm.generator import CrystaLLMGenerator
from crystal_crystallm.train import encode_cifs, main, read_cifs


@pytest.fixture
def perov_csv(tmp_path, make_perovskite):
    from pymatgen.io.cif import CifWriter

    path = tmp_path / "perov.csv"
    cells = [("Sr", "Ti", "O", 3.905), ("Ba", "Ti", "O", 4.0), ("Ca", "Ti", "O", 3.84), ("K", "Nb", "O", 4.02)]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
        w.writeheader()
        for i, c in enumerate(cells * 2):
            w.writerow({"material_id": str(i), "cif": str(CifWriter(make_perovskite(*c)))})
        w.writerow({"material_id": "bad", "cif": "not a cif"})
    return path


def test_encode_cifs_counts_what_it_drops(perov_csv):
    data = encode_cifs(read_cifs(perov_csv), max_tokens=320)
    assert data.ids.shape[0] == 8 and data.skipped == {"unparseable": 1, "too_long": 0, "unknown_tokens": 0}
    with pytest.raises(ConfigError, match="no usable CIF"):  # all too long for 100 tokens
        encode_cifs(read_cifs(perov_csv), max_tokens=100)
    with pytest.raises(ConfigError, match="no usable CIF"):
        encode_cifs(read_cifs(perov_csv)[-1:], max_tokens=320)
    with pytest.raises(ConfigError, match="does not exist"):
        read_cifs(perov_csv.with_name("missing.csv"))


def test_train_command_writes_a_loadable_checkpoint_and_card(perov_csv, tmp_path, capsys):
    out = tmp_path / "m.pt"
    card = tmp_path / "m.md"
    args = ["--data", str(perov_csv), "--out", str(out), "--card", str(card), "--epochs", "2", "--val-fraction", "0.25"]
    args += ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "320", "--batch-size", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    facts = json.loads(printed[printed.index("{") :])
    assert facts["sizes"] == {"train": 6, "val": 2} and facts["epochs"] == 2 and facts["best_epoch"] in (1, 2)
    assert set(facts["metrics"]) == {"train", "val"} and facts["metrics"]["val"]["perplexity"] > 1.0
    text = card.read_text()
    assert "| val |" in text and "sha256" in text and "train 6, val 2" in text
    gen = CrystaLLMGenerator(checkpoint=out, device="cpu")
    assert gen.net.cfg.n_embd == 16 and gen.meta["sizes"] == {"train": 6, "val": 2}
    assert gen.meta["skipped"]["unparseable"] == 1
