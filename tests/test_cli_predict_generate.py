"""``crystal predict`` / ``characterize`` refuse random weights unless asked; ``--weights`` takes
a checkpoint path; ``crystal generate``; ``--threads``. In-process (``crystal_cli.main.main``) and
on two small cells, so that the whole file runs in seconds."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystal.errors import ConfigError
from crystal.weights import sha256sum


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from crystal_cli.main import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch: pytest.MonkeyPatch):
    """The commands set torch's threads and CRYSTAL_NUM_THREADS for this process: restore both."""
    monkeypatch.setenv("CRYSTAL_NUM_THREADS", os.environ.get("CRYSTAL_NUM_THREADS", "1"))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cells")
    Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    ).to(filename=str(d / "srtio3.cif"))
    Structure(Lattice.cubic(4.2), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]).to(filename=str(d / "cscl.cif"))
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A crystal encoder checkpoint as `crystal train` writes it (``<run>/model.pt``)."""
    from crystal.plugins import load

    run = tmp_path_factory.mktemp("train-run")
    load("encoder", "cgcnn", {"seed": 7, "target": "heat"}, device="cpu").save(run / "model.pt")
    return run / "model.pt"


# ------------------------------------------------------------------ predict: random weights
def test_predict_without_weights_is_refused(cells: Path, tmp_path: Path, capsys) -> None:
    code, out, err = _run(["predict", str(cells), "-e", "cgcnn", "-o", str(tmp_path / "run")], capsys)
    assert code == 2, (out, err)
    assert "cgcnn-perov5-heat-ref" in err and "cgcnn-carbon24-energy" in err and "--random-init" in err
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_predict_random_init_runs_and_says_so(cells: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="no trained weights"):
        code, out, err = _run(
            ["predict", str(cells), "-e", "cgcnn", "--random-init", "--threads", "1", "-o", str(out_dir)], capsys
        )
    assert code == 0, err
    assert "random initial weights" in out
    rows = _rows(out_dir / "predictions.csv")
    assert {r["id"] for r in rows} == {"srtio3", "cscl"} and all(r["prediction"] for r in rows)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["config"]["steps"][0]["random_init"] is True
    assert manifest["torch_threads"] == 1 and os.environ["CRYSTAL_NUM_THREADS"] == "1"  # --threads
    (plugin,) = [p for p in manifest["plugins"] if p["name"] == "cgcnn"]
    assert plugin["weights"] == [] and plugin["checkpoint_sha256"] is None
    code, _, err = _run(
        ["predict", str(cells), "-e", "cgcnn", "--random-init", "--weights", "cgcnn-perov5-heat-ref", "-o", "x"], capsys
    )
    assert code == 2 and "not both" in err


def test_predict_with_named_weights_names_them() -> None:
    from crystal_cli.commands.predict import trained_config

    cfg, used = trained_config("encoder", "cgcnn", "cgcnn-perov5-heat-ref", {}, False, "crystal predict")
    assert cfg == {"weights": "cgcnn-perov5-heat-ref"} and used == "encoder 'cgcnn': weights 'cgcnn-perov5-heat-ref'"


# ------------------------------------------------------------------ predict: --weights PATH
def test_predict_weights_accepts_a_checkpoint_path(cells: Path, trained: Path, tmp_path: Path, capsys) -> None:
    from crystal.batch import CrystalBatch
    from crystal.io import read_structures
    from crystal.plugins import load, load_class
    from crystal_cli.commands.predict import weights_option

    cgcnn = load_class("encoder", "cgcnn")
    assert weights_option(cgcnn, str(trained)) == {"checkpoint": str(trained.resolve())}
    assert weights_option(cgcnn, "cgcnn-perov5-heat-ref") == {"weights": "cgcnn-perov5-heat-ref"}
    out_dir = tmp_path / "run"  # --weights with a train run's directory: its model.pt
    code, out, err = _run(
        ["predict", str(cells), "-e", "cgcnn", "--weights", str(trained.parent), "-o", str(out_dir)], capsys
    )
    assert code == 0, err
    assert f"checkpoint {trained.resolve()}" in out
    got = {r["id"]: float(r["heat"]) for r in _rows(out_dir / "predictions.csv")}
    (plugin,) = [p for p in json.loads((out_dir / "manifest.json").read_text())["plugins"] if p["name"] == "cgcnn"]
    assert plugin["checkpoint_sha256"] == sha256sum(trained)
    # the same checkpoint through the Python API (not through the CLI)
    read = read_structures([str(cells)])
    batch = CrystalBatch.from_structures(read.structures)
    ref = load("encoder", "cgcnn", {"checkpoint": str(trained)}, device="cpu").predict(batch)["heat"]
    assert got == pytest.approx(dict(zip(read.ids, ref.tolist(), strict=True)), abs=1e-5)


def test_predict_weights_path_errors_say_what_to_do(cells: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "runs" / "x" / "model.pt"
    code, _, err = _run(
        ["predict", str(cells), "-e", "cgcnn", "--weights", str(missing), "-o", str(tmp_path / "a")], capsys
    )
    assert code == 2 and "no such file" in err and str(missing) in err
    # a path given as a weights *name* (-c weights=...) gets the hint to use checkpoint=
    code, _, err = _run(
        ["predict", str(cells), "-e", "cgcnn", "-c", "weights=runs/x/model.pt", "-o", str(tmp_path / "b")], capsys
    )
    assert code == 2 and "-c checkpoint=runs/x/model.pt" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unknown_weights_errors_hint_checkpoint() -> None:
    from crystal.plugins import load_class
    from crystal.weights import find_weights

    with pytest.raises(ConfigError, match=r"checkpoint=runs/x/model\.pt"):
        load_class("encoder", "cgcnn").make_config({"weights": "runs/x/model.pt"})
    with pytest.raises(ConfigError, match=r"did you mean 'cgcnn-perov5-heat-ref'\?.*choose from") as info:
        load_class("encoder", "cgcnn").make_config({"weights": "cgcnn-perov5-heat"})
    assert "checkpoint=" not in str(info.value)  # a mistyped name is not a path
    with pytest.raises(Exception, match=r"model\.pth.*checkpoint="):
        find_weights("model.pth")


# ------------------------------------------------------------------ the pipeline's check
def _pipeline(cells: Path, step: dict) -> object:
    from crystal_pipeline import Pipeline

    return Pipeline.from_dict({"source": {"type": "files", "paths": [str(cells)]}, "steps": [step]})


def test_pipeline_refuses_predict_and_characterize_steps_without_weights(cells: Path) -> None:
    with pytest.raises(ConfigError, match=r"step 'p'.*schnet-perov5-heat-ref.*random_init = true on step 'p'"):
        _pipeline(cells, {"id": "p", "type": "predict", "encoder": "schnet"}).check()  # type: ignore[attr-defined]
    _pipeline(cells, {"id": "p", "type": "predict", "encoder": "cgcnn", "random_init": True}).check()  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="random_init contradicts config weights"):
        _pipeline(  # type: ignore[attr-defined]
            cells,
            {
                "id": "p",
                "type": "predict",
                "encoder": "cgcnn",
                "random_init": True,
                "config": {"weights": "cgcnn-perov5-heat-ref"},
            },
        ).check()
    # xrdcnn's config defaults to its shipped weights: accepted; `random_init` really clears them
    _pipeline(cells, {"id": "x", "type": "characterize", "characterizer": "xrdcnn"}).check()  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"step 'x'.*xrdcnn-pyxtal230"):
        _pipeline(  # type: ignore[attr-defined]
            cells, {"id": "x", "type": "characterize", "characterizer": "xrdcnn", "config": {"weights": None}}
        ).check()


def test_validate_refuses_a_toml_predict_step_without_weights(cells: Path, tmp_path: Path, capsys) -> None:
    toml = tmp_path / "p.toml"
    body = f'[source]\ntype = "files"\npaths = ["{cells}"]\n\n[[steps]]\nid = "prop"\ntype = "predict"\nencoder = "cgcnn"\n'
    toml.write_text(body)
    code, _, err = _run(["validate", str(toml)], capsys)
    assert code == 2 and "step 'prop'" in err and "random_init = true" in err
    toml.write_text(body + "random_init = true\n")
    code, _, err = _run(["validate", str(toml)], capsys)
    assert code == 0, err


def test_weights_config_default_and_random_init() -> None:
    from crystal.components import ComponentConfig, Encoder
    from crystal.plugins import load_class
    from crystal_pipeline.runner import weights_config

    class Cfg(ComponentConfig):
        weights: str | None = None

    class WithDefault(Encoder):
        name = "with-default"
        version = "1"
        Config = Cfg
        weights = ("w-small", "w-large")
        default_weights = "w-large"
        targets = ("y",)

        def predict(self, batch):  # pragma: no cover - not called
            raise NotImplementedError

    assert weights_config(WithDefault, {}, random_init=False) == {"weights": "w-large"}
    assert weights_config(WithDefault, {"weights": "w-small"}, random_init=False) == {"weights": "w-small"}
    assert weights_config(WithDefault, {}, random_init=True) == {"weights": None}
    xrdcnn = load_class("characterizer", "xrdcnn")
    assert weights_config(xrdcnn, {}, random_init=True) == {"weights": None}  # the flag is not a no-op
    assert weights_config(xrdcnn, {}, random_init=False) == {"weights": "xrdcnn-pyxtal230"}


def test_characterize_names_default_weights_and_refuses_random(cells: Path, capsys) -> None:
    from crystal_cli.commands.predict import trained_config

    cfg, used = trained_config("characterizer", "xrdcnn", None, {}, False, "crystal characterize")
    assert cfg == {"weights": "xrdcnn-pyxtal230"} and used is not None and "(its default weights)" in used
    with pytest.raises(ConfigError, match="--random-init"):
        trained_config("characterizer", "xrdcnn", None, {"weights": None}, False, "crystal characterize")
    code, _, err = _run(["characterize", str(cells / "cscl.cif"), "-c", "weights=model.pt"], capsys)
    assert code == 2 and "checkpoint=model.pt" in err


# ------------------------------------------------------------------ generate
GENERATOR = '''
from pydantic import Field
from pymatgen.core import Lattice, Structure

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Generator

CALLS = []


class Cfg(ComponentConfig):
    a: float = Field(4.0, gt=0, description="cubic lattice parameter, Å")
    checkpoint: str | None = Field(None, description="a file (recorded only)")


class Cubes(Generator):
    """One-atom cubic cells of the first element asked for."""

    name = "fake-cubes"
    version = "1"
    Config = Cfg
    devices = ("cpu",)

    def generate(self, num_samples, conditions=None, *, seed=None):
        CALLS.append({"n": num_samples, "conditions": conditions, "seed": seed, "config": self.config})
        element = (conditions.chemical_system or ("Cu",))[0] if conditions is not None else "Cu"
        lattice = Lattice.cubic(self.config.a)
        batch = CrystalBatch.from_structures([Structure(lattice, [element], [[0, 0, 0]]) for _ in range(num_samples)])
        batch.ids = [f"cube-{seed}-{k}" for k in range(num_samples)]
        return batch
'''


@pytest.fixture
def cubes(fake_distribution):
    fake_distribution(
        "crystal-fake-cubes",
        {"crystal.generators": {"fake-cubes": "fake_cubes.gen:Cubes"}},
        {"fake_cubes/__init__.py": "", "fake_cubes/gen.py": GENERATOR},
    )
    import fake_cubes.gen

    fake_cubes.gen.CALLS.clear()
    return fake_cubes.gen


def test_generate_writes_cifs_and_summary(cubes, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "gen"
    ckpt = tmp_path / "g.ckpt"
    ckpt.write_bytes(b"x")
    argv = [
        "generate",
        "-g",
        "fake-cubes",
        "--chemical-system",
        "Li-Mn-O",
        "--space-group",
        "225",
        "--space-group",
        "221",
    ]
    argv += ["-z", "1", "-z", "2", "--num", "3", "--seed", "5", "-c", "a=3.5", "--weights", str(ckpt)]
    code, out, err = _run([*argv, "--threads", "1", "-o", str(out_dir), "-q"], capsys)
    assert code == 0, err
    assert out.strip() == str(out_dir)
    assert sum(c["n"] for c in cubes.CALLS) >= 3
    cond = cubes.CALLS[0]["conditions"]
    assert (
        cond.chemical_system == ("Li", "Mn", "O") and cond.space_groups == (225, 221) and cond.formula_units == (1, 2)
    )
    assert cubes.CALLS[0]["config"].a == 3.5 and cubes.CALLS[0]["config"].checkpoint == str(ckpt.resolve())
    rows = _rows(out_dir / "summary.csv")
    assert len(rows) == 3 and {r["formula"] for r in rows} == {"Li1"}
    cifs = sorted((out_dir / "structures").glob("*.cif"))
    assert [p.stem for p in cifs] == sorted(r["id"] for r in rows)
    s = Structure.from_file(str(cifs[0]))
    assert s.lattice.a == pytest.approx(3.5) and s.composition.reduced_formula == "Li"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["status"] == "complete" and manifest["torch_threads"] == 1
    assert manifest["config"]["source"]["num_samples"] == 3
    # the output directory is not overwritten
    code, _, err = _run([*argv, "-o", str(out_dir), "-q"], capsys)
    assert code == 2 and "exists" in err


def test_generate_rejects_bad_options(cubes, tmp_path: Path, capsys) -> None:
    code, _, err = _run(
        ["generate", "-g", "fake-cubes", "--chemical-system", "Li-Xx-O", "-o", str(tmp_path / "a")], capsys
    )
    assert code == 2 and "'Xx' is not an element" in err
    code, _, err = _run(["generate", "-g", "fake-cubes", "--space-group", "231", "-o", str(tmp_path / "b")], capsys)
    assert code == 2
    code, _, err = _run(["generate", "-g", "no-such-generator", "-o", str(tmp_path / "c")], capsys)
    assert code == 2 and "no-such-generator" in err
    assert not any((tmp_path / n).exists() for n in "abc")


@pytest.mark.slow
def test_generate_with_pyxtal(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "gen"
    argv = ["generate", "-g", "pyxtal", "--composition", "NaCl", "--space-group", "225", "-z", "4", "--num", "2"]
    code, _, err = _run([*argv, "-o", str(out_dir), "-q"], capsys)
    assert code == 0, err
    for cif in (out_dir / "structures").glob("*.cif"):
        s = Structure.from_file(str(cif))
        assert s.composition.reduced_formula == "NaCl" and s.get_space_group_info()[1] == 225
    assert len(_rows(out_dir / "summary.csv")) == 2
