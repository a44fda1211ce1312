"""Processes started by a cluster launcher (torchrun, SLURM's srun): what Lightning is given.

``crystal train`` can start its own DDP processes (``fit.devices = N``: Lightning's
subprocess launcher on one node, or ``num_nodes`` with ``MASTER_ADDR``/``NODE_RANK`` set by
hand), or run as one of the processes that a launcher already started:

* **torchrun** (TorchElastic; ``TORCHELASTIC_RUN_ID`` is set): ``WORLD_SIZE``, ``RANK``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (processes on this node), ``GROUP_RANK`` (node),
  ``MASTER_ADDR``/``MASTER_PORT``.
* **SLURM** (``srun``; ``SLURM_NTASKS`` is set and the job is not named ``bash`` or
  ``interactive``): ``SLURM_NTASKS`` (world size), ``SLURM_NTASKS_PER_NODE``,
  ``SLURM_NNODES`` (or ``SLURM_JOB_NUM_NODES``), ``SLURM_PROCID`` (rank), ``SLURM_LOCALID``,
  ``SLURM_NODEID``; ``MASTER_ADDR`` defaults to the first host of ``SLURM_NODELIST`` and
  ``MASTER_PORT`` to 15000 + the last four digits of ``SLURM_JOB_ID``.

The detection is Lightning's own (``TorchElasticEnvironment`` first, since torchrun can run
inside a SLURM allocation, then ``SLURMEnvironment``); Lightning then takes ranks and the
rendezvous address from the environment, but it takes ``devices`` and ``num_nodes`` from
the Trainer's arguments and, with its default ``devices=1``, would train one independent
copy per process. :func:`resolve_placement` therefore gives Lightning the launcher's
processes per node and node count: ``fit.devices`` / ``fit.num_nodes`` left unset (or
``devices = "auto"``) follow the launcher, values given explicitly must agree with it
(:class:`~crystal.errors.ConfigError` otherwise), and ``strategy = "ddp_spawn"``, which
starts processes itself, is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from crystal.errors import ConfigError
from crystal_train.options import FitConfig

__all__ = ["ClusterLaunch", "Placement", "detect_launch", "is_rank_zero", "resolve_placement"]

LauncherName = Literal["torchrun", "slurm"]


@dataclass(frozen=True)
class ClusterLaunch:
    """The process layout a launcher set up, read from its environment variables."""

    launcher: LauncherName
    world_size: int
    global_rank: int
    local_rank: int
    node_rank: int
    processes_per_node: int
    num_nodes: int


@dataclass(frozen=True)
class Placement:
    """What crystal passes to ``lightning.Trainer``: ``devices``, ``num_nodes``, ``strategy``.

    ``launch`` is the launcher's layout, ``None`` when no launcher started this process."""

    devices: int | Literal["auto"]
    num_nodes: int
    strategy: str
    launch: ClusterLaunch | None = None


def _int(env: Mapping[str, str], name: str, launcher: str) -> int:
    text = env.get(name)
    if text is None:
        raise ConfigError(f"{launcher} launch: environment variable {name} is not set")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{launcher} launch: environment variable {name}={text!r} is not an integer") from None


def _torchrun(env: Mapping[str, str]) -> ClusterLaunch:
    world = _int(env, "WORLD_SIZE", "torchrun")
    local_world = _int(env, "LOCAL_WORLD_SIZE", "torchrun")
    if local_world < 1 or world % local_world:
        raise ConfigError(
            f"torchrun launch: WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local_world}; "
            "DDP through Lightning needs the same --nproc-per-node on every node"
        )
    return ClusterLaunch(
        "torchrun",
        world_size=world,
        global_rank=_int(env, "RANK", "torchrun"),
        local_rank=_int(env, "LOCAL_RANK", "torchrun"),
        node_rank=int(env.get("GROUP_RANK", "0")),
        processes_per_node=local_world,
        num_nodes=world // local_world,
    )


def _slurm(env: Mapping[str, str]) -> ClusterLaunch:
    ntasks = _int(env, "SLURM_NTASKS", "SLURM")
    nodes_var = "SLURM_NNODES" if "SLURM_NNODES" in env else "SLURM_JOB_NUM_NODES"
    nodes = _int(env, nodes_var, "SLURM") if nodes_var in env else 1
    if "SLURM_NTASKS_PER_NODE" in env:
        per_node = _int(env, "SLURM_NTASKS_PER_NODE", "SLURM")
    elif ntasks == 1:
        per_node = 1
    else:
        raise ConfigError(
            f"SLURM launch: SLURM_NTASKS={ntasks} without SLURM_NTASKS_PER_NODE; DDP needs the same number of "
            "tasks on every node: use #SBATCH --ntasks-per-node=G (one task per GPU) instead of --ntasks"
        )
    if per_node * nodes != ntasks:
        raise ConfigError(
            f"SLURM launch: SLURM_NTASKS={ntasks} is not SLURM_NTASKS_PER_NODE={per_node} x {nodes_var}={nodes}; "
            "launch with plain `srun` inside the allocation (no -n/-N that change the task layout)"
        )
    return ClusterLaunch(
        "slurm",
        world_size=ntasks,
        global_rank=_int(env, "SLURM_PROCID", "SLURM"),
        local_rank=_int(env, "SLURM_LOCALID", "SLURM"),
        node_rank=_int(env, "SLURM_NODEID", "SLURM"),
        processes_per_node=per_node,
        num_nodes=nodes,
    )


def _under_torchrun(env: Mapping[str, str]) -> bool:
    # torch.distributed.is_torchelastic_launched(), which Lightning uses, on a given environment
    return "TORCHELASTIC_RUN_ID" in env


def _under_slurm(env: Mapping[str, str]) -> bool:
    # lightning.fabric.plugins.environments.slurm._is_srun_used
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def detect_launch(env: Mapping[str, str] | None = None) -> ClusterLaunch | None:
    """The launcher that started this process (torchrun before SLURM, as Lightning decides), or ``None``."""
    env = os.environ if env is None else env
    if _under_torchrun(env):
        return _torchrun(env)
    if _under_slurm(env):
        return _slurm(env)
    return None


def is_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0, the one that writes the run directory.

    Under a launcher: ``RANK`` / ``SLURM_PROCID`` is 0. Otherwise the process the user
    started is rank 0; Lightning's own DDP children carry ``LOCAL_RANK`` > 0, and the other
    nodes of a hand-made multi-node run ``NODE_RANK`` > 0."""
    env = os.environ if env is None else env
    if _under_torchrun(env):
        return _int(env, "RANK", "torchrun") == 0
    if _under_slurm(env):
        return _int(env, "SLURM_PROCID", "SLURM") == 0
    return int(env.get("LOCAL_RANK", "0")) == 0 and int(env.get("NODE_RANK", "0")) == 0


def resolve_placement(cfg: FitConfig, env: Mapping[str, str] | None = None) -> Placement:
    """``devices``, ``num_nodes`` and ``strategy`` for Lightning, from ``cfg`` and the launcher (module doc).

    Raises :class:`ConfigError` naming the ``[fit]`` field and the environment variable when
    an explicitly given ``fit.devices`` / ``fit.num_nodes`` disagrees with the launcher."""
    launch = detect_launch(env)
    if launch is None:
        return Placement(cfg.devices, cfg.num_nodes, cfg.resolved_strategy)
    given = cfg.model_fields_set
    source = {
        "torchrun": ("LOCAL_WORLD_SIZE", "WORLD_SIZE / LOCAL_WORLD_SIZE", "--nproc-per-node", "--nnodes"),
        "slurm": ("SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "--ntasks-per-node", "--nodes"),
    }[launch.launcher]
    if "devices" in given and cfg.devices != "auto" and cfg.devices != launch.processes_per_node:
        raise ConfigError(
            f"fit.devices = {cfg.devices}, but {launch.launcher} started {launch.processes_per_node} process(es) "
            f"per node ({source[0]}={launch.processes_per_node}); under a launcher each process drives one "
            f"device: leave fit.devices / --devices unset (or 'auto'), or launch with {source[2]}={cfg.devices}"
        )
    if "num_nodes" in given and cfg.num_nodes != launch.num_nodes:
        raise ConfigError(
            f"fit.num_nodes = {cfg.num_nodes}, but {launch.launcher} runs on {launch.num_nodes} node(s) "
            f"({source[1]} = {launch.num_nodes}): leave fit.num_nodes unset, or launch with {source[3]}={cfg.num_nodes}"
        )
    if cfg.strategy == "ddp_spawn":
        raise ConfigError(
            f"fit.strategy = 'ddp_spawn' starts its own processes, but {launch.launcher} already started "
            f"{launch.world_size}: use strategy 'ddp' or 'auto' under a launcher"
        )
    strategy = cfg.strategy if cfg.strategy != "auto" or launch.world_size == 1 else "ddp"
    return Placement(launch.processes_per_node, launch.num_nodes, strategy, launch)
