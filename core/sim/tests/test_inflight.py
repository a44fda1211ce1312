"""In-flight batching and the memory model of crystal_sim (relax and MD)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ase.build import bulk
from pydantic import Field

from crystal import ConfigError, CrystalBatch
from crystal.components import ComponentConfig, Potential, PotentialOutput
from crystal.testing import LennardJones
from crystal_sim import memory
from crystal_sim.md import run_md
from crystal_sim.relax import relax


class MorseConfig(ComponentConfig):
    depth: float = Field(0.0104, gt=0, description="well depth D, eV")
    width: float = Field(1.3, gt=0, description="a, 1/Å")
    r0: float = Field(3.8, gt=0, description="pair distance at the minimum, Å")


class Morse27(Potential):
    """A cheap smooth test potential: Morse pairs ``D[(1 - e^{-a(r - r0)})² - 1]`` between the
    atoms of a crystal and their images in the 27 nearest cells (no neighbour search).
    Forces and stress are exact by autograd through a homogeneous strain."""

    name = "morse-27"
    version = "1"
    Config = MorseConfig

    def compute(self, batch, *, forces=True, stress=True):
        cfg = self.config
        B, dtype, device = len(batch), batch.dtype, batch.device
        n = batch.num_atoms
        crystal = torch.repeat_interleave(torch.arange(B, device=device), n * n)
        first = torch.cumsum(n * n, 0) - n * n
        p = torch.arange(len(crystal), device=device) - first[crystal]
        i = batch.ptr[crystal] + p // n[crystal]
        j = batch.ptr[crystal] + p % n[crystal]
        grid = torch.tensor([-1, 0, 1], dtype=dtype, device=device)
        shifts = torch.cartesian_prod(grid, grid, grid)  # (27, 3)
        with torch.enable_grad():
            strain = torch.zeros((B, 3, 3), dtype=dtype, device=device, requires_grad=stress)
            deform = torch.eye(3, dtype=dtype, device=device) + 0.5 * (strain + strain.transpose(1, 2))
            pos = batch.cart_coords.detach().requires_grad_(forces)
            pos_s = torch.einsum("ni,nij->nj", pos, deform[batch.batch])
            lat = batch.lattices @ deform
            d = (pos_s[j] - pos_s[i])[:, None, :] + torch.einsum("si,pij->psj", shifts, lat[crystal])
            real = ~((i == j)[:, None] & (shifts.abs().sum(1) == 0)[None, :])
            r = torch.sqrt(torch.where(real, (d * d).sum(-1), torch.ones_like(d[..., 0])))
            pair = cfg.depth * ((1 - torch.exp(-cfg.width * (r - cfg.r0))) ** 2 - 1)
            pair = torch.where(real, pair, torch.zeros_like(pair))
            energy = torch.zeros(B, dtype=dtype, device=device).index_add(0, crystal, 0.5 * pair.sum(1))
            inputs = [t for t, want in ((pos, forces), (strain, stress)) if want]
            grads = torch.autograd.grad(energy.sum(), inputs) if inputs else ()
        out = PotentialOutput(energy=energy.detach())
        if forces:
            out.forces = -grads[0]
        if stress:
            out.stress = grads[-1] / batch.volumes[:, None, None]
        return out


class Recording(Morse27):
    """The test potential, recording the crystals of every evaluation and, optionally,
    running out of memory above ``oom_atoms`` atoms per evaluation."""

    name = "recording-morse"

    def __init__(self, *args, oom_atoms=None, error=torch.OutOfMemoryError, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []
        self.atoms: list[int] = []
        self.oom_atoms = oom_atoms
        self.error = error
        self.failures = 0

    def compute(self, batch, *, forces=True, stress=True):
        if self.oom_atoms is not None and batch.num_nodes > self.oom_atoms:
            self.failures += 1
            raise self.error(f"CUDA out of memory. Tried to allocate {batch.num_nodes} GiB")
        self.calls.append(list(batch.ids))
        self.atoms.append(batch.num_nodes)
        return super().compute(batch, forces=forces, stress=stress)


def _crystals():
    """Argon cells that converge after very different numbers of FIRE steps."""
    out = []
    for k, (kind, a, rattle, reps) in enumerate(
        [
            ("fcc", 5.6, 0.25, (2, 1, 1)),
            ("sc", 3.5, 0.0, (1, 1, 1)),
            ("hcp", 3.6, 0.15, (1, 1, 1)),
            ("fcc", 5.1, 0.05, (1, 1, 1)),
            ("bcc", 4.6, 0.2, (2, 1, 1)),
        ]
    ):
        atoms = bulk("Ar", kind, a=a, c=1.63 * a if kind == "hcp" else None) * reps
        if rattle:
            atoms.rattle(rattle, seed=k)
        out.append(atoms)
    return CrystalBatch.from_atoms(out, ids=[f"c{k}" for k in range(len(out))])


CUTOFF = 5.0


def _lj(**kwargs):
    return Recording(device="cpu", **kwargs)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "_MODELS", {})
    monkeypatch.setattr(memory, "_OOM_CEILING", {})
    monkeypatch.setattr(memory, "_PROBE_METRIC", {})


@pytest.fixture(scope="module")
def crystals():
    return _crystals()


RELAX = {"fmax": 4e-3, "max_steps": 150, "max_batch_metric": None}


@pytest.fixture(scope="module")
def reference(crystals):
    """The crystals relaxed in one batch that shrinks as they converge."""
    return relax(Morse27(device="cpu"), crystals, **RELAX, inflight=False)


def _same(a, b, k_a=None, k_b=None):
    """Relax results ``a`` (crystal k_a, or all) and ``b`` (crystal k_b) agree to 1e-10."""
    ia = slice(None) if k_a is None else slice(k_a, k_a + 1)
    ib = slice(None) if k_b is None else slice(k_b, k_b + 1)
    assert a.steps[ia].tolist() == b.steps[ib].tolist()
    assert a.converged[ia].tolist() == b.converged[ib].tolist()
    torch.testing.assert_close(a.energy[ia], b.energy[ib], rtol=0, atol=1e-10)
    torch.testing.assert_close(a.batch.lattices[ia], b.batch.lattices[ib], rtol=0, atol=1e-10)
    pa = a.batch.cart_coords[a.batch.batch == k_a] if k_a is not None else a.batch.cart_coords
    pb = b.batch.cart_coords[b.batch.batch == k_b] if k_b is not None else b.batch.cart_coords
    torch.testing.assert_close(pa, pb, rtol=0, atol=1e-10)


def test_relax_identical_alone_shrinking_and_in_flight(crystals, reference):
    whole = reference
    assert len(set(whole.steps.tolist())) >= 4 and whole.converged.sum() >= 4  # a mix of fast and slow
    lj = _lj()
    for k in range(len(crystals)):
        alone = relax(lj, crystals.select([k]), **RELAX)
        _same(whole, alone, k, 0)
    _same(whole, relax(lj, crystals, **{**RELAX, "max_batch_metric": 5.0}))  # in flight, at most 5 atoms at once


def test_lennard_jones_alone_equals_in_flight(crystals):
    """The same with a potential that builds a radius graph over the whole evaluation."""
    lj = LennardJones(device="cpu", cutoff=CUTOFF)
    some = crystals.select([2, 0, 4])
    opts = {**RELAX, "max_steps": 15}
    flight = relax(lj, some, **opts, max_batch_size=2)
    for k in range(len(some)):
        _same(flight, relax(lj, some.select([k]), **opts), k, 0)


def test_queue_refills_the_active_set(crystals, reference):
    lj = _lj()
    flight = relax(lj, crystals, **RELAX, max_batch_size=3)
    sizes = [len(c) for c in lj.calls]
    evaluations = sum(sizes)
    assert evaluations == int((flight.steps + 1).sum())  # every crystal: one evaluation per step, plus one
    # while crystals wait, every evaluation holds a full set of 3
    started = [next(i for i, c in enumerate(lj.calls) if cid in c) for cid in crystals.ids]
    assert all(s == 3 for s in sizes[: max(started) + 1])
    assert max(sizes) == 3
    n_flight = len(lj.calls)
    _same(reference, flight)

    lj.calls.clear()
    shrink = relax(lj, crystals, **RELAX, max_batch_size=3, inflight=False)
    assert sum(len(c) for c in lj.calls) == evaluations
    # the shrinking batches run the second group only after the slowest of the first: more calls
    first = shrink.steps[:3].max().item() + 1
    assert len(lj.calls) == first + shrink.steps[3:].max().item() + 1
    assert n_flight < len(lj.calls)
    _same(reference, shrink)


def test_metric_capacity_is_respected(crystals):
    lj = _lj()
    relax(lj, crystals, **{**RELAX, "max_batch_metric": 4.0})
    big = int(crystals.num_atoms.max())
    assert max(lj.atoms) <= max(4, big)  # a crystal above the capacity still runs, alone
    assert all(n <= 4 or len(c) == 1 for n, c in zip(lj.atoms, lj.calls, strict=True))


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError])
def test_out_of_memory_halves_and_retries_with_identical_results(crystals, reference, error):
    ref = reference
    hungry = _lj(oom_atoms=5, error=error)
    res = relax(hungry, crystals, **RELAX)
    _same(ref, res)
    assert hungry.failures >= 1 and max(hungry.atoms) <= 5
    lonely = _lj(oom_atoms=1, error=error)
    with pytest.raises(error, match="out of memory"):
        relax(lonely, crystals, **RELAX)  # alone and still out of memory: raised for the caller to isolate


def test_out_of_memory_ceiling_is_remembered_in_auto_mode(crystals):
    hungry = _lj(oom_atoms=5)  # the calibration probes run out of memory too
    relax(hungry, crystals, fmax=2e-3, max_steps=20)
    limits = memory.BatchLimits()
    ceiling = memory.batch_capacity(hungry, torch.float64, limits)
    assert ceiling is not None and ceiling <= 5
    hungry.failures = 0
    relax(hungry, crystals, fmax=2e-3, max_steps=20)
    assert hungry.failures == 0  # the second call starts below the ceiling


def test_other_errors_are_not_retried(crystals):
    broken = _lj(oom_atoms=0, error=ValueError)
    with pytest.raises(ValueError):
        relax(broken, crystals, **RELAX)
    assert broken.failures == 1


def test_trajectory_frames_do_not_depend_on_batching(crystals):
    lj = Morse27(device="cpu")
    opts = {**RELAX, "max_steps": 60, "trajectory_every": 7}
    a = relax(lj, crystals, **opts, inflight=False)
    b = relax(lj, crystals, **opts, max_batch_size=2)
    assert [k for k, _ in a.trajectory] == [k for k, _ in b.trajectory]
    assert a.trajectory[-1][0] == int(a.steps.max())
    for (_, fa), (_, fb) in zip(a.trajectory, b.trajectory, strict=True):
        assert len(fa) == len(crystals)
        torch.testing.assert_close(fa.cart_coords, fb.cart_coords, rtol=0, atol=1e-10)
        torch.testing.assert_close(fa.crystal_properties["energy"], fb.crystal_properties["energy"], rtol=0, atol=1e-10)


def test_md_identical_in_groups_and_after_out_of_memory(crystals):
    lj = Morse27(device="cpu")
    opts = {"ensemble": "nvt-langevin", "steps": 8, "timestep": 4.0, "temperature": 60.0, "log_every": 2, "seed": 5}
    ref = run_md(lj, crystals, **opts, max_batch_metric=None)
    rec = _lj()
    seen = []
    grouped = run_md(
        rec, crystals, **opts, max_batch_size=2, max_batch_metric=None, callback=lambda s: seen.append(s.index.tolist())
    )
    assert max(len(c) for c in rec.calls) == 2
    assert sorted({tuple(i) for i in seen}) == [(0, 1), (2, 3), (4,)]
    hungry = _lj(oom_atoms=4)
    halved = run_md(hungry, crystals, **opts, max_batch_metric=None)
    assert hungry.failures >= 1 and max(hungry.atoms) <= 4
    for res in (grouped, halved):
        for name in ("total_energy", "potential_energy", "temperature", "velocities", "forces"):
            torch.testing.assert_close(getattr(res, name), getattr(ref, name), rtol=0, atol=1e-10)
        torch.testing.assert_close(res.batch.cart_coords, ref.batch.cart_coords, rtol=0, atol=1e-10)
        torch.testing.assert_close(res.initial_potential_energy, lj.energy(crystals), rtol=0, atol=1e-10)
    # a crystal alone with seed s + k: exactly its trajectory in the batch
    alone = run_md(lj, crystals.select([3]), **{**opts, "seed": 5 + 3})
    torch.testing.assert_close(alone.total_energy[:, 0], ref.total_energy[:, 3], rtol=0, atol=1e-10)


def test_calibration_is_cached_and_reused(tmp_path):
    lj = _lj()
    model = memory.memory_model(lj, torch.float64)
    if model is None:
        pytest.skip("no peak-memory counter on this platform (/proc/self/clear_refs)")
    assert model.metric == "atoms" and model.method == "cpu-rss-high-water"
    assert model.bytes_per_unit > 0 and len(model.points) >= 2
    # the peaks grow with the batch (a probe with 8x the atoms takes more memory than one copy)
    assert model.points[-1][1] > model.points[0][1]
    files = list((tmp_path / "cache" / "memory").glob("recording-morse-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["key"]["potential"] == "recording-morse" and data["key"]["dtype"] == "float64"
    assert data["bytes_per_unit"] == model.bytes_per_unit

    memory._MODELS.clear()  # a new process: read from the file, no evaluation
    n = len(lj.calls)
    again = memory.memory_model(lj, torch.float64)
    assert again == model and len(lj.calls) == n
    # another config or dtype is another model (another file)
    key = memory._model_key(lj, torch.float64)
    assert memory._cache_file(key) == files[0]
    assert memory._cache_file(memory._model_key(lj, torch.float32)) != files[0]
    assert memory._cache_file(memory._model_key(Recording(device="cpu", depth=0.02), torch.float64)) != files[0]
    # refresh calibrates again
    memory.memory_model(lj, torch.float64, refresh=True)
    assert len(lj.calls) > n


def test_small_queues_skip_the_calibration(crystals, tmp_path, monkeypatch):
    lj = _lj()
    relax(lj, crystals, fmax=2e-3, max_steps=2)  # 8 atoms: less than the probes would evaluate
    assert not any("memory-probe" in c for c in lj.calls)
    assert not (tmp_path / "cache" / "memory").exists()
    monkeypatch.setattr(memory, "probe_metric", lambda potential, dtype: 0.0)
    relax(lj, crystals, fmax=2e-3, max_steps=2)
    assert any("memory-probe" in c for c in lj.calls)
    assert len(list((tmp_path / "cache" / "memory").glob("*.json"))) == 1


def test_auto_capacity_comes_from_the_model_and_the_free_memory(crystals, monkeypatch):
    lj = _lj()
    fake = memory.MemoryModel("atoms", 1000.0, 2000.0, "test", ((1.0, 3000.0),), {})
    monkeypatch.setattr(memory, "memory_model", lambda potential, dtype, refresh=False: fake)
    monkeypatch.setattr(memory, "available_memory", lambda device: 10_000)
    monkeypatch.setattr(memory, "probe_metric", lambda potential, dtype: 0.0)  # calibrate for any queue
    limits = memory.BatchLimits(memory_fraction=0.5)
    assert memory.batch_capacity(lj, torch.float64, limits) == pytest.approx((0.5 * 10_000 - 2000) / 1000)
    relax(lj, crystals, fmax=2e-3, max_steps=30, memory_fraction=0.5)  # capacity 3 atoms
    assert all(n <= 3 or len(c) == 1 for n, c in zip(lj.atoms, lj.calls, strict=True))
    assert max(len(c) for c in lj.calls) >= 2  # small crystals do share an evaluation


def test_metrics():
    assert memory.memory_metric_of(LennardJones(device="cpu", cutoff=CUTOFF)) == ("atoms", CUTOFF)
    assert memory.memory_metric_of(Morse27(device="cpu")) == ("atoms", None)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    atoms.rattle(0.1, seed=0)
    batch = CrystalBatch.from_atoms([atoms])
    from crystal.neighbors import radius_graph

    actual = radius_graph(batch, 6.0).edge_index.shape[1]
    estimate = float(memory.metric_values("edges", batch.num_atoms, batch.volumes, 6.0)[0])
    assert estimate == pytest.approx(actual, rel=0.1)  # n · n/V · 4/3 π r³ against the real graph
    n, v = float(batch.num_atoms[0]), float(batch.volumes[0])
    assert float(memory.metric_values("atoms2_per_volume", batch.num_atoms, batch.volumes)[0]) == pytest.approx(
        n * n / v
    )
    with pytest.raises(ValueError, match="needs a cutoff"):
        memory.metric_values("edges", batch.num_atoms, batch.volumes)

    class EdgesNoCutoff(LennardJones):
        name = "edges-no-cutoff"
        memory_metric = "edges"

    pot = EdgesNoCutoff(device="cpu")
    pot.config = object()  # no cutoff anywhere: the density metric instead
    assert memory.memory_metric_of(pot) == ("atoms2_per_volume", None)

    with pytest.raises(TypeError, match="memory_metric"):

        class Wrong(LennardJones):
            name = "wrong"
            memory_metric = "bytes"


@pytest.mark.parametrize(
    ("module", "cls"),
    [
        ("crystal_chgnet.potential", "CHGNetPotential"),
        ("crystal_sevennet.potential", "SevenNetPotential"),
        ("crystal_mace.potential", "MACEPotential"),
        ("crystal_m3gnet.potential", "M3GNetPotential"),
    ],
)
def test_graph_potentials_declare_edges(module, cls):
    mod = pytest.importorskip(module)
    potential = getattr(mod, cls)
    assert issubclass(potential, Potential) and potential.memory_metric == "edges"


def test_config_rules():
    with pytest.raises(ConfigError, match="memory_fraction is only used with max_batch_metric = 'auto'"):
        relax(LennardJones(device="cpu"), _crystals().select([1]), max_batch_metric=10.0, memory_fraction=0.5)
    with pytest.raises(ConfigError, match="max_batch_size"):
        run_md(LennardJones(device="cpu"), _crystals().select([1]), steps=1, max_batch_size=0)
    assert memory._fit([(1.0, 100.0), (2.0, 100.0)]) is None  # peaks that do not grow: no model
    overhead, slope = memory._fit([(10.0, 1500.0), (20.0, 2500.0), (40.0, 4500.0)])
    assert overhead == pytest.approx(500.0) and slope == pytest.approx(100.0)
    assert memory.MemoryModel("atoms", 100.0, 500.0, "t", (), {}).capacity(10_500) == pytest.approx(100.0)
    assert math.isfinite(memory.MemoryModel("atoms", 100.0, 500.0, "t", (), {}).capacity(0)) is True


def test_pipeline_steps_carry_the_batching_fields():
    config = pytest.importorskip("crystal_pipeline.config")
    step = config.RelaxStep(id="r", type="relax", potential="lennard-jones", max_batch_size=4, inflight=False)
    cfg = step.relax_config()
    assert cfg.max_batch_size == 4 and cfg.inflight is False and cfg.max_batch_metric == "auto"
    md = config.MDStep(id="m", type="md", potential="lennard-jones", max_batch_metric=100.0)
    assert md.md_config([]).max_batch_metric == 100.0
    with pytest.raises(ValueError, match="memory_fraction"):
        config.RelaxStep(id="r", type="relax", potential="lennard-jones", max_batch_metric=None, memory_fraction=0.3)
