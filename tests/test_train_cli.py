"""`crystal train` end to end: artefacts, predict with the result, resume, bad rows, DDP.

Small SchNet / MEGNet models on 40 real Perov-5 structures keep each run to seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import crystal_cli

TINY_SCHNET = ["-c", "n_interactions=1", "-c", "n_features=16", "-c", "n_filters=16"]


@pytest.fixture
def small_csv(tmp_path: Path, shared_data: Path) -> Path:
    rows = list(csv.DictReader((shared_data / "perov_5" / "test.csv").open()))[:40]
    path = tmp_path / "small.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> SimpleNamespace:
    """``crystal ARGS`` in this process, with the fields of a ``CompletedProcess``."""
    from crystal_cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def _read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_train_predict_resume(tmp_path: Path, small_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (`crystal_cli.main.main`): seven commands, no interpreter start-up each."""
    out = tmp_path / "run"
    args = [
        "train",
        "-e",
        "schnet",
        "--train",
        str(small_csv),
        "--test",
        str(small_csv),
        "-t",
        "heat_ref:unit=eV",
        *TINY_SCHNET,
        "--batch-size",
        "8",
        "-o",
        str(out),
        "--quiet",
    ]
    r = _cli(capsys, *args, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    for name in (
        "model.pt",
        "model-card.md",
        "summary.json",
        "metrics.csv",
        "predictions.csv",
        "parity.png",
        "failures.csv",
        "train-config.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sizes"] == {"train": 36, "val": 4, "test": 40} and summary["epochs"] == 2
    assert summary["sha256"] in (out / "model-card.md").read_text()
    assert len(_read(out / "metrics.csv")) == 2
    # the trained model through `crystal predict` gives the run's own test predictions
    r = _cli(
        capsys,
        "predict",
        str(small_csv),
        "-e",
        "schnet",
        "-c",
        f"checkpoint='{out / 'model.pt'}'",
        "-c",
        f"sha256='{summary['sha256']}'",
        "--run-dir",
        str(tmp_path / "pred"),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    pred = {row["id"]: float(row["heat_ref"]) for row in _read(tmp_path / "pred" / "predictions.csv")}
    train_pred = {row["id"]: float(row["heat_ref_pred"]) for row in _read(out / "predictions.csv")}
    assert pred.keys() == train_pred.keys()
    assert max(abs(pred[k] - train_pred[k]) for k in pred) < 1e-5
    # an existing run is not overwritten; --resume continues it
    r = _cli(capsys, *args, "--epochs", "2")
    assert r.returncode == 2 and "already holds a run" in r.stderr
    r = _cli(capsys, *args, "--epochs", "3", "--resume")
    assert r.returncode == 2 and "max_epochs, which the onecycle schedule depends on" in r.stderr
    args += ["--set", "optim.scheduler='none'"]
    r = _cli(capsys, *args, "--epochs", "2", "-o", str(tmp_path / "flat"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "flat"
    r = _cli(capsys, *args, "--epochs", "3", "--resume", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert [row["epoch"] for row in _read(out / "metrics.csv")] == ["3"]  # a resumed run logs its new epochs
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    r = _cli(capsys, *args, "--epochs", "4", "--resume", "--lr", "0.5", "-o", str(out))
    assert r.returncode == 2 and "fit.lr" in r.stderr


def test_bad_rows_are_skipped_and_reported(tmp_path: Path, small_csv: Path) -> None:
    rows = _read(small_csv)[:12]
    rows[1]["cif"] = "data_broken\n_cell_length_a 4.0\n"
    rows[2]["heat_ref"] = "nan"
    rows[3]["heat_ref"] = ""
    rows[4]["cif"] = rows[4]["cif"].replace("Ba", "Am")  # outside MEGNet's elements (Z <= 94)
    data = tmp_path / "bad.csv"
    with data.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    am_row = rows[4]["material_id"] if "Am" in rows[4]["cif"] else None
    out = tmp_path / "run"
    r = crystal_cli(
        "train",
        "-e",
        "megnet",
        "--train",
        str(data),
        "-t",
        "heat_ref",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    failures = {row["id"]: row for row in _read(out / "failures.csv")}
    assert failures[rows[1]["material_id"]]["step"] == "read"
    assert "NaN" in failures[rows[2]["material_id"]]["reason"]
    assert "not a number" in failures[rows[3]["material_id"]]["reason"]
    if am_row is not None:
        assert failures[am_row]["step"] == "elements" and "Am" in failures[am_row]["reason"]
    assert f"skipped {len(failures)} row(s)" in r.stderr
    # on_error = raise stops at the first bad row, naming file, row and field
    r = crystal_cli(
        "train",
        "-e",
        "megnet",
        "--train",
        str(data),
        "-t",
        "heat_ref",
        "--epochs",
        "1",
        "--set",
        "data.on_error='raise'",
        "-o",
        str(tmp_path / "strict"),
    )
    assert r.returncode == 1 and str(data) in r.stderr and "row 3: field 'cif'" in r.stderr


def test_config_errors_exit_2(tmp_path: Path, small_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _cli(
        capsys,
        "train",
        "-e",
        "schnet",
        "--train",
        str(small_csv),
        "-t",
        "heat_ref",
        "-c",
        "bogus=1",
        "-o",
        str(tmp_path / "a"),
    )
    assert r.returncode == 2 and "bogus" in r.stderr
    r = _cli(capsys, "train", "-e", "schnet", "--train", str(small_csv))
    assert r.returncode == 2 and "--target" in r.stderr
    r = _cli(capsys, "train", "-e", "chgnet", "--train", str(small_csv), "-t", "heat_ref", "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and "chgnet" in r.stderr
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'encoder = "schnet"\n[[targets]]\nname = "heat_ref"\n[data]\ntrain = "{small_csv}"\n[optim]\nmomentum = 0.9\n'
    )
    r = _cli(capsys, "train", str(toml))
    # the [optim] table of older run files is read into [fit]
    assert r.returncode == 2 and f"{toml}: field 'fit'" in r.stderr and "momentum" in r.stderr


def test_two_process_ddp_on_cpu(tmp_path: Path, small_csv: Path) -> None:
    """Lightning DDP with the gloo backend: two processes, one model written by rank 0."""
    out = tmp_path / "ddp"
    r = crystal_cli(
        "train",
        "-e",
        "schnet",
        "--train",
        str(small_csv),
        "-t",
        "heat_ref",
        *TINY_SCHNET,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--strategy",
        "ddp",
        "-o",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 2 and (out / "model.pt").is_file()


def test_predict_with_named_weights_records_them(tmp_path: Path, small_csv: Path) -> None:
    """`crystal predict --weights` (the pipeline's predict step) with shipped weights."""
    out = tmp_path / "pred"
    r = crystal_cli(
        "predict", str(small_csv), "-e", "cgcnn", "--weights", "cgcnn-perov5-heat-ref", "--run-dir", str(out), "--quiet"
    )
    assert r.returncode == 0, r.stderr
    rows = _read(out / "predictions.csv")
    assert len(rows) == 40 and all(row["heat_ref"] for row in rows)
    truth = {row["material_id"]: float(row["heat_ref"]) for row in _read(small_csv)}
    mae = sum(abs(float(row["heat_ref"]) - truth[row["id"]]) for row in rows) / len(rows)
    spread = sum(abs(v - sum(truth.values()) / len(truth)) for v in truth.values()) / len(truth)
    assert mae < 0.5 * spread
    manifest = json.loads((out / "manifest.json").read_text())
    (plugin,) = [p for p in manifest["plugins"] if p["name"] == "cgcnn"]
    assert plugin["weights"][0]["name"] == "cgcnn-perov5-heat-ref" and len(plugin["weights"][0]["sha256"]) == 64
    assert plugin["checkpoint_sha256"] == plugin["weights"][0]["sha256"]
    r = crystal_cli(
        "predict", str(small_csv), "-e", "cgcnn", "--weights", "cgcnn-perov5-heat", "--run-dir", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "did you mean 'cgcnn-perov5-heat-ref'" in r.stderr


def test_megnet_trains_with_a_temperature_state_input(tmp_path: Path, small_csv: Path) -> None:
    """`data.inputs` puts per-structure columns into the batch for MEGNet's global state."""
    rows = _read(small_csv)[:16]
    for k, row in enumerate(rows):
        row["temperature"] = "" if k == 3 else str(0.3 + 0.1 * k)  # one row lacks it
    data = tmp_path / "with_t.csv"
    with data.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "run"
    r = crystal_cli(
        "train",
        "-e",
        "megnet",
        "--train",
        str(data),
        "-t",
        "heat_ref",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "-c",
        "state_inputs=['temperature']",
        "--set",
        "data.inputs=['temperature']",
        "-o",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    (failure,) = _read(out / "failures.csv")
    assert failure["id"] == rows[3]["material_id"] and "input 'temperature'" in failure["reason"]
    r = crystal_cli(
        "train",
        "-e",
        "megnet",
        "--train",
        str(data),
        "-t",
        "heat_ref",
        "--epochs",
        "1",
        "-c",
        "state_inputs=['temperature']",
        "-o",
        str(tmp_path / "no-input"),
        "--quiet",
    )
    assert r.returncode != 0 and "temperature" in r.stderr  # declared state input, no data for it


def test_logger_tensorboard_writes_events(tmp_path: Path, small_csv: Path) -> None:
    """`--logger tensorboard`: epoch metrics also go to TensorBoard event files under logs/."""
    pytest.importorskip("tensorboardX", reason="crystal-train[test] installs tensorboardX")
    out = tmp_path / "run"
    r = crystal_cli(
        "train", "-e", "schnet", "--train", str(small_csv), "-t", "heat_ref", *TINY_SCHNET,
        "--epochs", "1", "--batch-size", "8", "--logger", "tensorboard", "-o", str(out), "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list((out / "logs").rglob("events.out.tfevents.*")) and (out / "metrics.csv").is_file()
    assert json.loads((out / "train-config.json").read_text())["fit"]["logger"] == ["csv", "tensorboard"]
    r = crystal_cli("train", "-e", "schnet", "--train", str(small_csv), "-t", "heat_ref", "--logger", "mlflow")
    assert r.returncode == 2 and "fit.logger" in r.stderr
