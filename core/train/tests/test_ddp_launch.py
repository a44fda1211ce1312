"""`crystal train` as one process of many: torchrun and SLURM (srun) launches.

The fast tests set a launcher's environment variables and check, against Lightning's own
``TorchElasticEnvironment`` / ``SLURMEnvironment`` (the reference), what crystal gives the
``Trainer``; nothing is launched. The slow test launches two real CPU (gloo) processes, with
torchrun and with the environment srun gives its tasks, and checks that only rank 0 writes
the run directory and that both ranks end with the same weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from crystal.errors import ConfigError
from crystal_train import FitConfig, parse_train_config
from crystal_train.cluster import detect_launch, is_rank_zero, resolve_placement
from crystal_train.potential import parse_potential_config

#: variables of launchers; cleared so that a test run inside a SLURM job or torchrun sees only its own
_LAUNCH_VARS = (
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in _LAUNCH_VARS:
            monkeypatch.delenv(name)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    return monkeypatch


def slurm_env(ntasks_per_node: int, nodes: int, procid: int) -> dict[str, str]:
    """What srun sets in task ``procid`` of ``#SBATCH --nodes=N --ntasks-per-node=G`` (block distribution)."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "crystal-train",
        "SLURM_NTASKS": str(ntasks_per_node * nodes),
        "SLURM_NTASKS_PER_NODE": str(ntasks_per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % ntasks_per_node),
        "SLURM_NODEID": str(procid // ntasks_per_node),
        "SLURM_NODELIST": "gpu[07-08]",
    }


def torchrun_env(nproc_per_node: int, nnodes: int, rank: int) -> dict[str, str]:
    """What torchrun sets in worker ``rank`` of ``torchrun --nnodes=N --nproc-per-node=G``."""
    return {
        "TORCHELASTIC_RUN_ID": "crystal-test",
        "WORLD_SIZE": str(nproc_per_node * nnodes),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank % nproc_per_node),
        "LOCAL_WORLD_SIZE": str(nproc_per_node),
        "GROUP_RANK": str(rank // nproc_per_node),
        "GROUP_WORLD_SIZE": str(nnodes),
    }


def _lightning_view(cfg: FitConfig) -> dict[str, object]:
    """Build the Trainer crystal builds (no launch) and read Lightning's view of the process."""
    from crystal_train.engine import _make_trainer

    trainer = _make_trainer(cfg, None, [], False, True)
    env = trainer.strategy.cluster_environment
    # what Lightning's launcher checks before it starts training (raises on a mismatch)
    env.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    return {
        "environment": type(env).__name__,
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "num_nodes": trainer.num_nodes,
        "num_devices": trainer.num_devices,
    }


@pytest.mark.parametrize(("nodes", "per_node", "procid"), [(2, 4, 6), (1, 2, 0), (3, 1, 2)])
def test_slurm_variables_reach_lightning(clean_env: pytest.MonkeyPatch, nodes: int, per_node: int, procid: int) -> None:
    for key, value in slurm_env(per_node, nodes, procid).items():
        clean_env.setenv(key, value)
    # a run file that does not mention devices / num_nodes (crystal train's defaults: devices = 1)
    cfg = parse_train_config({"encoder": "x", "targets": [{"name": "y"}], "data": {"train": ["a.csv"]}})
    view = _lightning_view(cfg.fit.model_copy(update={"accelerator": "cpu"}))
    assert view == {
        "environment": "SLURMEnvironment",
        "strategy": "DDPStrategy",
        "world_size": nodes * per_node,
        "global_rank": procid,
        "local_rank": procid % per_node,
        "node_rank": procid // per_node,
        "num_nodes": nodes,
        "num_devices": per_node,
    }
    assert is_rank_zero() == (procid == 0)


def test_torchrun_variables_reach_lightning(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in torchrun_env(2, 2, 3).items():
        clean_env.setenv(key, value)
    # torchrun inside a SLURM allocation: torchrun's processes win, as in Lightning
    for key, value in slurm_env(1, 2, 1).items():
        clean_env.setenv(key, value)
    view = _lightning_view(FitConfig(accelerator="cpu", devices="auto"))
    assert view == {
        "environment": "TorchElasticEnvironment",
        "strategy": "DDPStrategy",
        "world_size": 4,
        "global_rank": 3,
        "local_rank": 1,
        "node_rank": 1,
        "num_nodes": 2,
        "num_devices": 2,
    }
    assert not is_rank_zero()
    clean_env.setenv("RANK", "0")
    assert is_rank_zero()


def test_plain_runs_keep_their_options(clean_env: pytest.MonkeyPatch) -> None:
    """No launcher: the options go to Lightning unchanged; Lightning's DDP children are not rank 0."""
    placement = resolve_placement(FitConfig(devices=2))
    assert (placement.devices, placement.num_nodes, placement.strategy, placement.launch) == (2, 1, "ddp", None)
    assert detect_launch() is None and is_rank_zero()
    # an interactive SLURM shell (job name bash / interactive) is not a launch, for Lightning neither
    for key, value in {**slurm_env(2, 1, 0), "SLURM_JOB_NAME": "interactive"}.items():
        clean_env.setenv(key, value)
    assert detect_launch() is None
    assert _lightning_view(FitConfig(accelerator="cpu", devices=2))["environment"] == "LightningEnvironment"
    clean_env.setenv("LOCAL_RANK", "1")
    assert not is_rank_zero()


def test_options_given_explicitly_must_agree_with_the_launcher(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in torchrun_env(2, 1, 0).items():
        clean_env.setenv(key, value)
    base = {"encoder": "x", "targets": [{"name": "y"}], "data": {"train": ["a.csv"]}}
    # given and equal to the launcher's: fine; given and different: an error naming both
    assert resolve_placement(parse_train_config({**base, "fit": {"devices": 2}}).fit).devices == 2
    with pytest.raises(ConfigError, match=r"fit.devices = 1, but torchrun started 2 .*LOCAL_WORLD_SIZE=2"):
        resolve_placement(parse_train_config({**base, "fit": {"devices": 1}}).fit)
    with pytest.raises(ConfigError, match=r"fit.num_nodes = 2, but torchrun runs on 1 node.*--nnodes=2"):
        resolve_placement(FitConfig(num_nodes=2))
    with pytest.raises(ConfigError, match=r"ddp_spawn.*already started 2"):
        resolve_placement(FitConfig(strategy="ddp_spawn"))
    # potentials: their [fit] defaults do not count as given
    pot = parse_potential_config({"potential": "p", "data": {"train": ["a.xyz"]}, "fit": {"max_epochs": 1}})
    assert resolve_placement(pot.fit).devices == 2
    for name in _LAUNCH_VARS:
        clean_env.delenv(name, raising=False)
    for key, value in slurm_env(4, 2, 0).items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match=r"fit.devices = 8, .*SLURM_NTASKS_PER_NODE=4.*--ntasks-per-node=8"):
        resolve_placement(FitConfig(devices=8))
    # a task layout DDP cannot use
    clean_env.delenv("SLURM_NTASKS_PER_NODE")
    with pytest.raises(ConfigError, match=r"SLURM_NTASKS=8 without SLURM_NTASKS_PER_NODE.*--ntasks-per-node"):
        resolve_placement(FitConfig())
    clean_env.setenv("SLURM_NTASKS_PER_NODE", "3")
    with pytest.raises(ConfigError, match=r"SLURM_NTASKS=8 is not SLURM_NTASKS_PER_NODE=3 x SLURM_NNODES=2"):
        resolve_placement(FitConfig())


def test_mismatch_fails_before_the_run_directory_is_written(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from crystal_train import train

    for key, value in slurm_env(2, 1, 0).items():
        clean_env.setenv(key, value)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"fit\.devices = 4"):
        train({"encoder": "x", "targets": [{"name": "y"}], "data": {"train": ["a.csv"]}, "fit": {"devices": 4},
               "output": str(out)})  # fmt: skip
    assert not out.exists()


def test_only_rank_zero_creates_the_run_directory(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Encoders and potentials: every srun task checks the output, only SLURM_PROCID 0 writes it."""
    from crystal_train.encoders import prepare_run
    from crystal_train.potential import _prepare_run

    enc = parse_train_config({"encoder": "x", "targets": [{"name": "y"}], "data": {"train": ["a.csv"]}})
    pot = parse_potential_config({"potential": "p", "data": {"train": ["a.xyz"]}})
    for procid in (1, 0):
        for key, value in slurm_env(2, 1, procid).items():
            clean_env.setenv(key, value)
        a = prepare_run(enc.model_copy(update={"output": str(tmp_path / "enc")}), resume=False)
        b = _prepare_run(pot.model_copy(update={"output": str(tmp_path / "pot")}))
        assert (a / "train-config.json").is_file() == (b / "train-config.json").is_file() == (procid == 0)
    (tmp_path / "enc" / "model.pt").write_bytes(b"")
    clean_env.setenv("SLURM_PROCID", "1")  # a refused run stops every task (none waits for rank 0)
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run(enc.model_copy(update={"output": str(tmp_path / "enc")}), resume=False)


# --------------------------------------------------------------------------- real launches (2 CPU processes)
_SPY = '''
"""`crystal train` (crystal_cli.main) as one DDP process; records which rank writes and its final weights."""
import os
import sys

import torch

import crystal_train.encoders as enc
from crystal_cli.main import main

spy_dir = sys.argv[1]
rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))


def log(what):
    with open(os.path.join(spy_dir, "writes.log"), "a") as fh:
        fh.write(f"{rank} {what}\\n")


def spied(name, fn):
    def wrapper(*args, **kwargs):
        log(name if name != "atomic_write" else os.path.basename(str(args[0])))
        return fn(*args, **kwargs)

    return wrapper


for name in ("write_encoder_run", "write_failures", "atomic_write"):
    setattr(enc, name, spied(name, getattr(enc, name)))
real_train = enc.train


def train(*args, **kwargs):
    result = real_train(*args, **kwargs)
    torch.save(result.encoder.net.state_dict(), os.path.join(spy_dir, f"rank{rank}.pt"))
    return result


enc.train = train
sys.exit(main(sys.argv[2:]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _small_csv(path: Path) -> Path:
    import csv

    from pymatgen.core import Lattice, Structure

    elements = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba"]
    rows = []
    for i in range(16):
        s = Structure(
            Lattice.cubic(4.0 + 0.05 * i), [elements[i % 8], elements[(3 * i + 1) % 8]], [[0, 0, 0], [0.5] * 3]
        )
        rows.append({"material_id": f"s{i}", "cif": s.to(fmt="cif"), "y": str(float(i % 8) + 0.3 * ((3 * i + 1) % 8))})
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_two_process_launch_rank_zero_writes(tmp_path: Path, launcher: str) -> None:
    """A real 2-process gloo run of `crystal train` started by torchrun, or with srun's task environment."""
    pytest.importorskip("crystal_schnet")
    spy = tmp_path / "spy.py"
    spy.write_text(textwrap.dedent(_SPY))
    out = tmp_path / "run"
    args = [str(tmp_path), "train", "-e", "schnet", "--train", str(_small_csv(tmp_path / "small.csv")), "-t", "y",
            "-c", "n_interactions=1", "-c", "n_features=8", "-c", "n_filters=8", "--epochs", "1", "--batch-size", "4",
            "--accelerator", "cpu", "-o", str(out), "--quiet"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not (k.startswith("SLURM_") or k in _LAUNCH_VARS)}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(spy), *args]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    else:  # what `srun` does for `#SBATCH --nodes=1 --ntasks-per-node=2`: one process per task, SLURM_* set
        procs = [
            subprocess.Popen([sys.executable, str(spy), *args], env={**env, **slurm_env(2, 1, rank)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in range(2)
        ]  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
    writes = sorted((tmp_path / "writes.log").read_text().splitlines())
    assert writes == ["0 train-config.json", "0 write_encoder_run", "0 write_failures"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processes"], summary["nodes"], summary["epochs"]) == (2, 1, 1)
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + one epoch, written by rank 0
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    saved = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    assert weights[0].keys() == weights[1].keys() == saved.keys()
    for key in saved:
        assert torch.equal(weights[0][key], weights[1][key]), key
        assert torch.equal(weights[0][key], saved[key]), key


# --------------------------------------------------------------------------- the documented commands
_DOCS = Path(__file__).resolve().parents[3] / "docs"


def _documented_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, arguments)`` of every `crystal train` / `crystal run` in the ```bash blocks of ``text``."""
    import re
    import shlex

    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            match = re.search(r"(?:\bcrystal|crystal_cli|\$\(which crystal\)) (train|run)(?=\s|$)(.*)", line)
            if match:
                shell = re.sub(r"\$\(\(.*?\)\)|\$\{?\w+\}?", "8", match.group(2).replace("$resume", ""))
                found.append((match.group(1), shlex.split(shell)))
    return found


def test_documented_cluster_commands_parse() -> None:
    """Every `crystal train` / `crystal run` line of docs/cluster.md and docs/training.md uses real options."""
    import typer

    from crystal_cli.main import app

    group = typer.main.get_command(app)
    commands = [c for doc in ("cluster.md", "training.md") for c in _documented_commands((_DOCS / doc).read_text())]
    assert {name for name, _ in commands} == {"train", "run"} and len(commands) >= 8
    for name, args in commands:
        group.commands[name].make_context(name, list(args))  # type: ignore[attr-defined]  # raises on an unknown option or a bad value
