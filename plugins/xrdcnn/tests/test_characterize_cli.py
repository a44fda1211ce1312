"""``crystal characterize`` end to end, and the pipeline's characterize step with xrdcnn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from pymatgen.io.cif import CifWriter

from crystal.batch import CrystalBatch
from crystal_xrd import simulate, write_pattern
from crystal_xrdcnn.characterizer import save_checkpoint
from crystal_xrdcnn.labels import head_labels
from crystal_xrdcnn.model import XRDCNN, NetConfig

GRID = {"wavelength": "CuKa", "two_theta_min": 5.0, "two_theta_max": 90.0, "step": 0.02}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = XRDCNN(NetConfig(input_points=4251, input_pool=8, channels=(4,), kernels=(5,), hidden=8)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(path, net, GRID)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, textbook) -> dict[str, Path]:
    nacl, rutile = textbook
    d = tmp_path_factory.mktemp("inputs")
    (d / "nacl.cif").write_text(str(CifWriter(nacl)))
    (d / "rutile.cif").write_text(str(CifWriter(rutile)))
    res = simulate(
        CrystalBatch.from_structures([rutile]).to(dtype=torch.float64), step=0.01, two_theta_min=10, two_theta_max=80
    )
    write_pattern(d / "measured.xy", res.two_theta, 1000 * res.patterns[0] + 20.0, comment="rutile, simulated")
    (d / "broken.xy").write_text("# header\n10.0 5\n10.02 abc\n")
    return {p.stem: p for p in d.iterdir()}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from crystal_cli.main import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_pattern_hypotheses_and_match(
    files: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["characterize", str(files["measured"]), "--top", "3", "-c", f"checkpoint='{checkpoint}'"]
    match = ["--match", str(files["nacl"]), "--match", str(files["rutile"])]
    code, out, err = _run([*argv, *match, "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["kind"] == "pattern" and data["characterizer"] == "xrdcnn"
    (result,) = data["results"]
    assert set(result["hypotheses"]) == {"crystal_system", "extinction_group", "space_group"}
    cs = result["hypotheses"]["crystal_system"]
    assert len(cs) == 3 and all(h["label"] in head_labels("crystal_system") for h in cs)
    probs = [h["probability"] for h in cs]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert [m["id"] for m in data["match"]] == ["rutile", "nacl"]
    assert data["match"][0]["score"] > 0.9 > data["match"][1]["score"]
    code, out, err = _run([*argv, *match], capsys)
    assert code == 0, err
    assert "crystal_system:" in out and "space_group:" in out and "1. rutile" in out and "%" in out


def test_cli_structures_are_simulated_then_classified(
    files: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        ["characterize", str(files["nacl"]), "--top", "2", "-c", f"checkpoint='{checkpoint}'", "--json"], capsys
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["kind"] == "structures" and [r["id"] for r in data["results"]] == ["nacl"]


def test_cli_malformed_pattern_is_a_clear_error(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["characterize", str(files["broken"]), "--no-classify", "--match", str(files["nacl"])], capsys)
    assert code != 0
    assert "broken.xy, line 3, field 2 (intensity): 'abc' is not a finite number" in err and "Traceback" not in err
    code, _, err = _run(["characterize", str(files["broken"].with_name("absent.xy"))], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(["characterize", str(files["measured"]), "--no-classify"], capsys)
    assert code == 2 and "--match" in err


def test_pipeline_characterize_step_on_structures(files: dict[str, Path], checkpoint: Path, tmp_path: Path) -> None:
    from crystal_pipeline import run_pipeline

    data = {
        "source": {"type": "files", "paths": [str(files["nacl"]), str(files["rutile"])]},
        "steps": [
            {"id": "xrd", "type": "characterize", "characterizer": "xrdcnn", "config": {"checkpoint": str(checkpoint)}}
        ],
        "sinks": [{"type": "csv", "path": "summary.csv"}],
    }
    res = run_pipeline(data, tmp_path / "run")
    props = res.batch.crystal_properties
    assert props["space_group_prob"].shape == (2,) and bool((props["space_group_prob"] > 0).all())
    with (tmp_path / "run" / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["crystal_system"] in head_labels("crystal_system") for r in rows)
    assert [p["name"] for p in res.manifest["plugins"]] == ["xrd", "xrdcnn"]
