"""Memory-aware batch sizes for the batched relaxer and MD.

How much memory one ``Potential.compute`` call takes grows with the crystals it sees. Each
potential declares the measure that fits it (:attr:`crystal.components.Potential.memory_metric`):

* ``"atoms"``: number of atoms (models whose cost is per atom);
* ``"edges"``: estimated directed edges of the radius graph, ``n · (n / V) · 4/3 π r_c³`` for a
  crystal of ``n`` atoms and volume ``V`` (Å³) with the potential's cutoff ``r_c`` (Å) (graph
  networks: CHGNet, SevenNet, MACE, M3GNet);
* ``"atoms2_per_volume"``: ``n² / V`` (Å⁻³), the same density scaling for potentials without a
  declared cutoff.

A :class:`MemoryModel` says how many bytes one unit of the metric costs. It is *calibrated*
once per (potential, weights/config, device, dtype) by evaluating the potential (forces and
stress, as the relaxer does) on growing batches of copies of a small crystal of its elements
and fitting ``peak bytes = overhead + bytes_per_unit · metric``; the result is cached as JSON in
:func:`memory_cache_dir`. The batch capacity (metric units per evaluation) is then
``(memory_fraction · available memory − overhead) / bytes_per_unit``, with the memory available
*now* (:func:`available_memory`). A queue whose whole metric is no larger than the largest
calibration probe (:func:`probe_metric`) is evaluated at once without calibrating: the
calibration would cost as much as the work.

How the peak is measured:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (exact, tensors
  only); the available memory is the driver's free memory plus what PyTorch's caching allocator
  holds unused.
* CPU (Linux): the process's resident-set high-water mark. Before each probe the heap is given
  back to the system (``malloc_trim``) and the mark is reset (``/proc/self/clear_refs``), so
  ``VmHWM − VmRSS before`` is the probe's peak. ``tracemalloc`` is no use here: torch allocates
  outside Python's allocator. The available memory is ``MemAvailable`` of ``/proc/meminfo``,
  lowered to the cgroup (v2) limit when the process runs in a container. Where the mark cannot
  be reset (not Linux) no model is calibrated: set ``max_batch_metric`` explicitly or rely on
  the out-of-memory retry below.

An out-of-memory error during an evaluation is not fatal: the relaxer and MD halve the
capacity and retry the evaluation with the state unchanged (:func:`is_out_of_memory`);
:func:`note_out_of_memory` keeps the lowered ceiling for the rest of the process, so later
batches of the same potential start below it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import math
import os
import platform
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import torch
from pydantic import Field, model_validator

from crystal.batch import CrystalBatch
from crystal.config import StrictModel

if TYPE_CHECKING:
    from crystal.components import Potential

__all__ = [
    "BatchLimits",
    "MemoryMetric",
    "MemoryModel",
    "available_memory",
    "batch_capacity",
    "calibrate_memory",
    "crystal_metric",
    "free_memory",
    "is_out_of_memory",
    "memory_cache_dir",
    "memory_metric_of",
    "memory_model",
    "metric_values",
    "note_out_of_memory",
    "potential_cutoff",
    "probe_metric",
]

log = logging.getLogger("crystal_sim.memory")

MemoryMetric = Literal["atoms", "edges", "atoms2_per_volume"]
METRICS: tuple[str, ...] = get_args(MemoryMetric)
DEFAULT_MEMORY_FRACTION = 0.8
CACHE_VERSION = 2


# ----------------------------------------------------------------------------- config
class BatchLimits(StrictModel):
    """How many crystals one potential evaluation may hold (shared by relax and MD configs)."""

    max_batch_size: int | None = Field(
        None, ge=1, description="crystals per potential evaluation at most (None: no limit by count)"
    )
    max_batch_metric: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto",
        description="size of one potential evaluation at most, in units of the potential's memory metric "
        "(atoms, estimated graph edges, or atoms²/Å³; see crystal_sim.memory); 'auto': from the potential's "
        "memory model, calibrated once per device and cached; None: no limit (an out-of-memory error still "
        "halves the batch and retries)",
    )
    memory_fraction: float = Field(
        DEFAULT_MEMORY_FRACTION,
        gt=0,
        le=1,
        description="share of the memory available at the start (GPU: free device memory; CPU: available RAM) "
        "that an evaluation may use, dimensionless; only with max_batch_metric = 'auto'",
    )

    @model_validator(mode="after")
    def _fraction_needs_auto(self) -> BatchLimits:
        if self.memory_fraction != DEFAULT_MEMORY_FRACTION and self.max_batch_metric != "auto":
            raise ValueError(
                f"memory_fraction is only used with max_batch_metric = 'auto', not {self.max_batch_metric!r}"
            )
        return self


# ----------------------------------------------------------------------------- metric
def potential_cutoff(potential: Potential) -> float | None:
    """The potential's neighbour cutoff, Å: its ``cutoff`` attribute, else a ``cutoff`` config field."""
    for value in (getattr(potential, "cutoff", None), getattr(potential.config, "cutoff", None)):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def metric_values(
    metric: str, num_atoms: torch.Tensor, volumes: torch.Tensor, cutoff: float | None = None
) -> torch.Tensor:
    """(B,) float64 memory metric of crystals with ``num_atoms`` atoms and ``volumes`` Å³."""
    n = num_atoms.to(torch.float64)
    vol = volumes.to(torch.float64).clamp_min(1e-6)
    if metric == "atoms":
        return n
    if metric == "atoms2_per_volume":
        return n * n / vol
    if metric == "edges":
        if cutoff is None:
            raise ValueError("the 'edges' memory metric needs a cutoff")
        return n * (n / vol) * (4.0 / 3.0 * math.pi * cutoff**3)
    raise ValueError(f"unknown memory metric {metric!r}; one of {', '.join(METRICS)}")


def memory_metric_of(potential: Potential) -> tuple[str, float | None]:
    """``(metric, cutoff)`` of ``potential``: its declared memory metric (``edges`` falls back to
    ``atoms2_per_volume`` without a cutoff) and its cutoff in Å (``None`` when it has none)."""
    metric = str(getattr(potential, "memory_metric", "atoms"))
    cutoff = potential_cutoff(potential)
    if metric == "edges" and cutoff is None:  # declared edges but no cutoff to estimate them
        metric = "atoms2_per_volume"
    return metric, cutoff


def crystal_metric(potential: Potential, batch: CrystalBatch) -> torch.Tensor:
    """(B,) float64 memory metric of each crystal of ``batch`` for ``potential``
    (its :attr:`~crystal.components.Potential.memory_metric`; ``edges`` falls back to
    ``atoms2_per_volume`` when the potential has no cutoff)."""
    metric, cutoff = memory_metric_of(potential)
    return metric_values(metric, batch.num_atoms, batch.volumes, cutoff)


# ----------------------------------------------------------------------------- out of memory
def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator failure (host ``MemoryError``, torch's CPU allocator,
    CUDA out of memory)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def free_memory() -> None:
    """Give back what a failed allocation left behind (Python garbage, the CUDA cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- measuring
def _proc_status() -> dict[str, int]:
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _trim_heap() -> None:
    """Return the freed heap to the system, so the resident set is what is in use."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the heap stays as it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_HWM_LOCK = threading.Lock()


def _cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return "VmHWM" in _proc_status()
    except OSError:
        return False


def _measure_peak(device: torch.device, fn: Callable[[], object]) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    with _HWM_LOCK:
        _trim_heap()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # Linux >= 4.0: reset the resident-set high-water mark to the current RSS
        before = _proc_status()["VmRSS"]
        out = fn()
        peak = _proc_status()["VmHWM"] - before
        del out
        _trim_heap()
        return max(0, int(peak))


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on ``device`` now (``None`` when unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:  # a container's own limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except ImportError:
            return None
    return min(found)


# ----------------------------------------------------------------------------- model
@dataclass(frozen=True)
class MemoryModel:
    """Bytes one evaluation of a potential takes: ``overhead_bytes + bytes_per_unit · metric``.

    ``points`` are the calibration measurements ``(metric, peak bytes)``; ``key`` says what the
    model is for (potential, config hash, device, dtype, torch version); ``method`` how the peak
    was measured (``"cuda-max-allocated"`` or ``"cpu-rss-high-water"``).
    """

    metric: str
    bytes_per_unit: float
    overhead_bytes: float
    method: str
    points: tuple[tuple[float, float], ...]
    key: dict[str, str]

    def capacity(self, budget_bytes: float) -> float:
        """Metric units that fit in ``budget_bytes`` (at least 0)."""
        return max(0.0, (budget_bytes - self.overhead_bytes) / self.bytes_per_unit)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["points"] = [list(p) for p in self.points]
        data["version"] = CACHE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryModel:
        return cls(
            metric=str(data["metric"]),
            bytes_per_unit=float(data["bytes_per_unit"]),
            overhead_bytes=float(data["overhead_bytes"]),
            method=str(data["method"]),
            points=tuple((float(m), float(b)) for m, b in data["points"]),
            key={str(k): str(v) for k, v in data["key"].items()},
        )


def memory_cache_dir() -> Path:
    """Where calibrated memory models are cached: ``$CRYSTAL_CACHE/memory``, else
    ``$XDG_CACHE_HOME/crystal/memory`` (``~/.cache/crystal/memory``)."""
    if env := os.environ.get("CRYSTAL_CACHE"):
        return Path(env).expanduser() / "memory"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crystal" / "memory"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{props.name}:{props.total_memory}"
    return f"{device.type}:{platform.machine()}"


def _model_key(potential: Potential, dtype: torch.dtype) -> dict[str, str]:
    cls = type(potential)
    try:
        config = potential.config.model_dump_json()
    except AttributeError:
        config = repr(potential.config)
    config_hash = hashlib.sha256(
        f"{cls.__module__}.{cls.__qualname__}|{getattr(potential, 'version', '')}|{config}".encode()
    ).hexdigest()[:16]
    metric, cutoff = memory_metric_of(potential)
    return {
        "potential": str(getattr(potential, "name", cls.__qualname__)),
        "config": config_hash,
        "device": _device_name(potential.device),
        "dtype": str(dtype).removeprefix("torch."),
        "metric": metric,
        "cutoff": f"{cutoff:g}" if cutoff is not None else "",
        "torch": torch.__version__,
    }


def _cache_file(key: dict[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return memory_cache_dir() / f"{key['potential']}-{digest}.json"


_MODELS: dict[str, MemoryModel | None] = {}
_OOM_CEILING: dict[str, float] = {}


def _key_str(key: dict[str, str]) -> str:
    return json.dumps(key, sort_keys=True)


_PREFERRED = ("Si", "Cu", "Al", "Fe", "Ni", "Na", "Mg", "C", "Ar", "O", "H")


def _probe_crystal(potential: Potential, dtype: torch.dtype, min_atoms: int = 24) -> CrystalBatch:
    """A small, dense crystal of one of the potential's elements (a supercell of its ASE
    reference structure; simple cubic at 2.5 Å where ASE knows none)."""
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, chemical_symbols

    covered = getattr(potential, "elements", None)
    allowed = set(covered) if covered else None
    symbol = next((s for s in _PREFERRED if allowed is None or atomic_numbers[s] in allowed), None)
    if symbol is None:
        assert allowed is not None
        symbol = chemical_symbols[min(allowed)]
    try:
        atoms = bulk(symbol, cubic=True)
    except (ValueError, KeyError, RuntimeError):
        atoms = Atoms(symbol, cell=[2.5, 2.5, 2.5], pbc=True)
    reps = [1, 1, 1]
    axis = 0
    while len(atoms) * reps[0] * reps[1] * reps[2] < min_atoms:
        reps[axis] += 1
        axis = (axis + 1) % 3
    atoms = atoms * tuple(reps)
    atoms.rattle(0.02, seed=0)
    batch = CrystalBatch.from_atoms([atoms], ids=["memory-probe"])
    return batch.to(potential.device, dtype=dtype)


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(overhead, bytes per unit) of ``bytes = overhead + slope · metric``; ``None`` when the
    measured peaks do not grow."""
    if not points:
        return None
    if len(points) == 1:
        m, b = points[0]
        return (0.0, b / m) if b > 0 else None
    n = len(points)
    mx = sum(m for m, _ in points) / n
    my = sum(b for _, b in points) / n
    sxx = sum((m - mx) ** 2 for m, _ in points)
    slope = sum((m - mx) * (b - my) for m, b in points) / sxx if sxx > 0 else 0.0
    if slope <= 0:
        return None
    overhead = max(0.0, my - slope * mx)
    # never below what any probe actually took
    slope = max(slope, max((b - overhead) / m for m, b in points))
    return overhead, slope


def _default_copies(device: torch.device) -> tuple[int, ...]:
    return (1, 2, 4, 8) if device.type == "cpu" else (1, 4, 16, 64, 256)


_PROBE_METRIC: dict[str, float] = {}


def probe_metric(potential: Potential, dtype: torch.dtype = torch.float64) -> float:
    """The metric of the largest batch :func:`calibrate_memory` evaluates: a queue no larger
    than this needs no memory model (calibrating would evaluate as much as relaxing it)."""
    skey = _key_str(_model_key(potential, dtype))
    if skey not in _PROBE_METRIC:
        try:
            probe = _probe_crystal(potential, dtype)
            _PROBE_METRIC[skey] = float(crystal_metric(potential, probe).sum()) * max(_default_copies(probe.device))
        except Exception:  # no probe crystal: calibration is impossible anyway
            _PROBE_METRIC[skey] = math.inf
    return _PROBE_METRIC[skey]


def calibrate_memory(
    potential: Potential,
    dtype: torch.dtype = torch.float64,
    *,
    copies: tuple[int, ...] | None = None,
    max_share: float = 0.25,
) -> MemoryModel | None:
    """Measure a :class:`MemoryModel` for ``potential`` now (no cache; see :func:`memory_model`).

    The potential evaluates forces and stress on ``copies`` copies of a small crystal
    (default ``1, 2, 4, 8`` on CPU, ``1, 4, 16, 64, 256`` on CUDA), stopping early when a probe
    takes more than ``max_share`` of the available memory or runs out of memory. Returns
    ``None`` when nothing can be measured (no peak counter on this platform, the potential
    cannot evaluate the probe, or the peaks do not grow with the batch)."""
    device = potential.device
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and not _cpu_peak_supported()):
        return None
    metric, _ = memory_metric_of(potential)
    key = _model_key(potential, dtype)
    try:
        probe = _probe_crystal(potential, dtype)
    except Exception as exc:  # an exotic element set: no model, the OOM retry still works
        log.warning("memory model of %s: no probe crystal (%s)", key["potential"], exc)
        return None
    if copies is None:
        copies = _default_copies(device)
    budget = available_memory(device)
    points: list[tuple[float, float]] = []

    def evaluate(batch: CrystalBatch) -> object:
        return potential.compute(batch, forces=True, stress=True)

    gc.collect()  # once: cyclic garbage freed during a probe would lower its measured peak
    try:
        for _ in range(2):  # warm-up: lazy initialisation, caches, TorchScript's profiling runs
            evaluate(probe)
        for k in copies:
            batch = CrystalBatch.concat([probe] * k)
            m = float(crystal_metric(potential, batch).sum())
            peak = _measure_peak(device, lambda b=batch: evaluate(b))  # type: ignore[misc]
            points.append((m, float(peak)))
            if budget is not None and peak > max_share * budget:
                break
    except Exception as exc:
        if not is_out_of_memory(exc):
            log.warning(
                "memory model of %s: the probe crystal failed (%s: %s)", key["potential"], type(exc).__name__, exc
            )
            return None
        free_memory()
        log.info("memory model of %s: out of memory at %d probe points", key["potential"], len(points))
    fitted = _fit(points)
    if fitted is None:
        return None
    overhead, slope = fitted
    method = "cuda-max-allocated" if device.type == "cuda" else "cpu-rss-high-water"
    return MemoryModel(metric, slope, overhead, method, tuple(points), key)


def memory_model(
    potential: Potential, dtype: torch.dtype = torch.float64, *, refresh: bool = False
) -> MemoryModel | None:
    """The cached :class:`MemoryModel` of ``potential`` on its device for ``dtype``, calibrating
    (:func:`calibrate_memory`) and caching it on first use (JSON in :func:`memory_cache_dir`;
    ``refresh=True`` calibrates again)."""
    key = _model_key(potential, dtype)
    skey = _key_str(key)
    if not refresh and skey in _MODELS:
        return _MODELS[skey]
    path = _cache_file(key)
    if not refresh and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == CACHE_VERSION and data.get("key") == key:
                model: MemoryModel | None = MemoryModel.from_json(data)
                _MODELS[skey] = model
                return model
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: calibrate again and overwrite
    model = calibrate_memory(potential, dtype)
    _MODELS[skey] = model
    if model is not None:
        from crystal.io import atomic_write

        try:
            with atomic_write(path) as fh:
                json.dump(model.to_json(), fh, indent=1)
        except OSError as exc:  # a read-only cache is not an error: the model is kept in memory
            log.warning("memory model of %s not cached in %s: %s", key["potential"], path, exc)
    return model


def note_out_of_memory(potential: Potential, dtype: torch.dtype, ceiling: float) -> None:
    """Remember, for the rest of the process, that ``potential`` ran out of memory above
    ``ceiling`` metric units: :func:`batch_capacity` stays below it."""
    skey = _key_str(_model_key(potential, dtype))
    _OOM_CEILING[skey] = min(ceiling, _OOM_CEILING.get(skey, math.inf))


def batch_capacity(
    potential: Potential, dtype: torch.dtype, limits: BatchLimits, total: float | None = None
) -> float | None:
    """Metric units one evaluation may hold under ``limits`` (``None``: no limit).

    With ``max_batch_metric = 'auto'`` this is the memory model's capacity for the memory
    available now, below any out-of-memory ceiling met in this process. ``total``, the metric of
    everything waiting, spares the calibration when it is no larger than :func:`probe_metric`."""
    setting = limits.max_batch_metric
    if setting is None:
        return None
    if setting != "auto":
        return float(setting)
    skey = _key_str(_model_key(potential, dtype))
    ceiling = _OOM_CEILING.get(skey)
    capacity: float | None = None
    if total is not None and skey not in _MODELS and total <= probe_metric(potential, dtype):
        return ceiling  # the whole queue is smaller than the calibration's own probes
    model = memory_model(potential, dtype)
    if model is not None:
        budget = available_memory(potential.device)
        if budget is not None:
            capacity = model.capacity(limits.memory_fraction * budget)
    if ceiling is not None:
        capacity = ceiling if capacity is None else min(capacity, ceiling)
    return capacity
