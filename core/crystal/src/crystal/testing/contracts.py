"""The contract every installed component must honour, as plain functions.

crystal's own test-suite runs :func:`check_plugin` for every installed plugin of every kind
(``tests/test_contracts.py``); plugin authors call the same functions from their tests::

    from crystal.testing.contracts import check_plugin

    def test_contract():
        check_plugin("potential", "my-potential")

Each check raises ``AssertionError`` naming the component and the broken promise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from crystal.batch import CrystalBatch
from crystal.components import Characterizer, Component, Encoder, Generator, Potential, Representation
from crystal.testing.checks import assert_close
from crystal.testing.transforms import permute, random_rotation, rotate, supercell, translate

__all__ = [
    "check_characterizer",
    "check_declarations",
    "check_encoder",
    "check_generator",
    "check_plugin",
    "check_potential",
    "check_representation",
    "sample_batch",
    "strained_batch",
]


def sample_batch(dtype: torch.dtype = torch.float64) -> CrystalBatch:
    """Three small real crystals, slightly rattled: Si (diamond), NaCl (rock salt), Cu (fcc ×2)."""
    from ase.build import bulk

    si = bulk("Si", "diamond", a=5.43)
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    cu = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
    for k, atoms in enumerate((si, nacl, cu)):
        atoms.rattle(0.03, seed=k)
    return CrystalBatch.from_atoms([si, nacl, cu], ids=["Si", "NaCl", "Cu2"]).to(dtype=dtype)


#: the deformation gradient of :func:`strained_batch`: 3 % stretch, 2-4 % compression and shears
_STRAIN = ((1.03, 0.02, 0.0), (0.0, 0.96, 0.03), (0.01, 0.0, 0.98))


def strained_batch(batch: CrystalBatch | None = None) -> CrystalBatch:
    """``batch`` (default :func:`sample_batch`) with every cell deformed by a fixed deformation
    gradient (a few percent of stretch, compression and shear; positions follow the cell): small
    non-cubic cells under a stress of order 1 GPa, on which the stress check can see a wrong
    sign or scale."""
    batch = batch if batch is not None else sample_batch()
    F = torch.tensor(_STRAIN, dtype=batch.dtype, device=batch.device)
    return batch.with_positions(batch.frac_coords, batch.lattices @ F.T)


def check_declarations(component: Component) -> None:
    """Class attributes are present and consistent with the installed manifest (if any)."""
    cls = type(component)
    name = f"{cls.kind.singular} {cls.name!r}"
    for attr in ("name", "version", "Config", "consumes", "produces", "devices"):
        assert getattr(cls, attr, None) not in (None, ""), f"{name}: missing {attr}"
    assert cls.Config.model_config.get("extra") == "forbid", f"{name}: Config must forbid unknown fields"
    from crystal.plugins import list_plugins

    for info in list_plugins(cls.kind.singular, include_disabled=True):
        if info.name == cls.name and info.manifest is not None:
            m = info.manifest
            for attr in ("consumes", "produces"):
                assert getattr(cls, attr) == getattr(m, attr), f"{name}: {attr} differs from the manifest"
            assert tuple(cls.devices) == tuple(m.devices), f"{name}: devices differ from the manifest"
            assert tuple(cls.weights) == tuple(m.weights), f"{name}: weights differ from the manifest"
            assert cls.default_weights == m.default_weights, f"{name}: default_weights differ from the manifest"


def _per_crystal(batch: CrystalBatch, fn: Callable[[CrystalBatch], torch.Tensor]) -> torch.Tensor:
    return torch.cat([fn(batch.select([i])) for i in range(len(batch))])


def check_potential(
    pot: Potential,
    batch: CrystalBatch | None = None,
    *,
    atol: float = 2e-3,
    rtol: float = 1e-4,
    fd_delta: float = 1e-3,
    fd_atol: float = 1e-2,
    stress_fd_delta: float = 1e-3,
    stress_fd_atol: float = 2e-4,
    stress_fd_rtol: float = 0.02,
) -> None:
    """Shapes, finiteness, batching, invariances (translation, permutation, left-handed
    cells), rotation equivariance, extensivity, −∇E = F and σ = (1/V) ∂E/∂ε.

    Forces are compared with central differences of the energy (``fd_delta`` Å, ``fd_atol``
    eV/Å); the stress with central differences of the energy under symmetric strains
    (``stress_fd_delta``, within ``stress_fd_atol`` eV/Å³ + ``stress_fd_rtol`` · |σ_fd|) on
    :func:`strained_batch` of the crystals: cells deformed by a few percent so that they are
    non-cubic and under stress (a wrong sign or scale cannot hide behind σ ≈ 0).
    """
    from crystal.testing.checks import (
        assert_forces_match_finite_differences,
        assert_stress_matches_finite_differences,
    )

    batch = (batch or sample_batch()).to(pot.device)
    name = f"potential {pot.name!r}"
    out = pot.compute(batch, forces=True, stress=True)
    B, N = len(batch), batch.num_nodes
    assert out.energy.shape == (B,), f"{name}: energy shape {tuple(out.energy.shape)} != ({B},)"
    assert out.forces is not None and out.forces.shape == (N, 3), f"{name}: forces must be (N, 3)"
    assert out.stress is not None and out.stress.shape == (B, 3, 3), f"{name}: stress must be (B, 3, 3)"
    for t, what in ((out.energy, "energy"), (out.forces, "forces"), (out.stress, "stress")):
        assert torch.isfinite(t).all(), f"{name}: non-finite {what}"
    only_e = pot.compute(batch, forces=False, stress=False)
    assert_close(only_e.energy, out.energy, atol, rtol, f"{name}: energy without forces/stress")
    assert_close(_per_crystal(batch, pot.energy), out.energy, atol, rtol, f"{name}: batched vs one-by-one energy")
    assert_close(
        pot.energy(translate(batch, torch.tensor([0.7, -0.3, 1.1]))),
        out.energy,
        atol,
        rtol,
        f"{name}: energy under translation",
    )
    permuted, order = permute(batch, torch.Generator().manual_seed(0))
    p_out = pot.compute(permuted, forces=True, stress=False)
    assert_close(p_out.energy, out.energy, atol, rtol, f"{name}: energy under permutation")
    assert p_out.forces is not None
    assert_close(p_out.forces, out.forces[order.to(out.forces.device)], atol, rtol, f"{name}: forces under permutation")
    R = random_rotation(torch.Generator().manual_seed(1), dtype=batch.dtype).to(batch.device)
    r_out = pot.compute(rotate(batch, R), forces=True, stress=True)
    Rd = R.to(out.forces.dtype)
    assert_close(r_out.energy, out.energy, atol, rtol, f"{name}: energy under rotation")
    assert r_out.forces is not None and r_out.stress is not None
    assert_close(r_out.forces, out.forces @ Rd.T, atol, rtol, f"{name}: forces under rotation")
    assert_close(r_out.stress, Rd @ out.stress @ Rd.T, atol, rtol, f"{name}: stress under rotation")
    # point inversion through the origin (lattice -> -lattice) gives left-handed cells
    # (negative determinant): energy and stress unchanged, forces flip sign
    i_out = pot.compute(batch.with_positions(batch.frac_coords, -batch.lattices), forces=True, stress=True)
    assert i_out.forces is not None and i_out.stress is not None
    assert_close(i_out.energy, out.energy, atol, rtol, f"{name}: energy of a left-handed (inverted) cell")
    assert_close(i_out.forces, -out.forces, atol, rtol, f"{name}: forces of a left-handed (inverted) cell")
    assert_close(i_out.stress, out.stress, atol, rtol, f"{name}: stress of a left-handed (inverted) cell")
    big = supercell(batch, (2, 1, 1))
    assert_close(pot.energy(big), 2 * out.energy, 2 * atol, rtol, f"{name}: extensivity under a 2x1x1 supercell")
    assert_forces_match_finite_differences(pot, batch, delta=fd_delta, atol=fd_atol, max_atoms=3)
    try:
        assert_stress_matches_finite_differences(
            pot, strained_batch(batch), delta=stress_fd_delta, atol=stress_fd_atol, rtol=stress_fd_rtol
        )
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from None


def check_generator(gen: Generator, num_samples: int = 3) -> None:
    """Valid, seeded, reproducible crystals."""
    name = f"generator {gen.name!r}"
    a = gen.generate(num_samples, seed=123)
    b = gen.generate(num_samples, seed=123)
    assert isinstance(a, CrystalBatch), f"{name}: generate must return a CrystalBatch"
    assert 1 <= len(a) <= num_samples, f"{name}: asked for {num_samples}, got {len(a)}"
    assert a.ids == b.ids and torch.equal(a.atomic_numbers, b.atomic_numbers), f"{name}: not reproducible for a seed"
    assert_close(a.frac_coords, b.frac_coords, 1e-10, 0, f"{name}: coordinates not reproducible for a seed")
    assert_close(a.lattices, b.lattices, 1e-10, 0, f"{name}: lattices not reproducible for a seed")
    assert len(set(a.ids)) == len(a), f"{name}: ids must be unique"
    bad = [(i, r) for i, r in zip(a.ids, a.validate(0.5), strict=True) if r is not None]
    assert not bad, f"{name}: invalid crystals {bad}"


def check_encoder(enc: Encoder, batch: CrystalBatch | None = None, *, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Declared targets, shapes, finiteness, batching and invariances."""
    batch = (batch or sample_batch()).to(enc.device)
    name = f"encoder {enc.name!r}"
    out = enc.predict(batch)
    assert set(out) == set(enc.targets), f"{name}: predicted {sorted(out)} but declares {sorted(enc.targets)}"
    for target, value in out.items():
        assert value.shape[0] in (len(batch), batch.num_nodes), f"{name}: {target} has shape {tuple(value.shape)}"
        assert torch.isfinite(value).all(), f"{name}: non-finite {target}"
    R = random_rotation(torch.Generator().manual_seed(2), dtype=batch.dtype).to(batch.device)
    for label, other in (
        ("rotation", rotate(batch, R)),
        ("translation", translate(batch, torch.tensor([0.4, 0.1, -2.0]))),
    ):
        o2 = enc.predict(other)
        for target in out:
            assert_close(o2[target], out[target], atol, rtol, f"{name}: {target} under {label}")
    singles = [enc.predict(batch.select([i])) for i in range(len(batch))]
    for target, value in out.items():
        if value.shape[0] == len(batch):
            assert_close(
                torch.cat([s[target] for s in singles]), value, atol, rtol, f"{name}: batched vs one-by-one {target}"
            )


def check_representation(rep: Representation, batch: CrystalBatch | None = None) -> None:
    """Returns named tensors, deterministically."""
    batch = (batch or sample_batch()).to(rep.device)
    name = f"representation {rep.name!r}"
    a, b = rep.represent(batch), rep.represent(batch)
    assert a and all(isinstance(v, torch.Tensor) for v in a.values()), f"{name}: must return named tensors"
    for key in a:
        assert_close(a[key].double(), b[key].double(), 0, 0, f"{name}: {key} not deterministic")


def check_characterizer(char: Characterizer, signals: torch.Tensor) -> None:
    """Scores are probabilities over the declared labels."""
    name = f"characterizer {char.name!r}"
    out = char.characterize(signals.to(char.device))
    for head, probs in out.items():
        assert probs.shape == (signals.shape[0], len(char.labels(head))), f"{name}: {head} shape {tuple(probs.shape)}"
        assert_close(
            probs.sum(dim=1), torch.ones(signals.shape[0]), 1e-4, 0, f"{name}: {head} probabilities must sum to 1"
        )


def check_plugin(
    kind: str, name: str, *, device: str = "cpu", config: dict[str, Any] | None = None, **kwargs: Any
) -> Component:
    """Load ``kind``/``name`` with its default config (or ``config``) and run the checks of its kind.

    When the default weights are a download that is not in the cache, the first weights the
    plugin ships are used instead (so the check never downloads).

    A trainable potential without weights in ``config`` is checked as a freshly initialised
    model covering the elements of :func:`sample_batch`.
    """
    from crystal.plugins import load, load_class
    from crystal.trainable_potential import TrainablePotential

    config = dict(config or {})
    cls = load_class(kind, name)
    default = getattr(cls, "default_weights", None)
    if default and not ({"weights", "checkpoint"} & set(config)):
        # default weights that are a download not yet in the cache: check the component with
        # weights it ships instead (tests never download)
        from crystal.weights import weights_status

        if not weights_status([default])[0].usable:
            shipped = [w for w in getattr(cls, "weights", ()) if weights_status([w])[0].where == "package"]
            if shipped:
                config["weights"] = shipped[0]
    if (
        isinstance(cls, type)
        and issubclass(cls, TrainablePotential)
        and not ({"weights", "checkpoint", "elements"} & set(config))
        and cls.default_weights is None
    ):
        config["elements"] = ("Na", "Si", "Cl", "Cu")
    comp = load(kind, name, config or None, device=device)
    check_declarations(comp)
    if isinstance(comp, Potential):
        check_potential(comp, **kwargs)
    elif isinstance(comp, Generator):
        check_generator(comp, **kwargs)
    elif isinstance(comp, Encoder):
        check_encoder(comp, **kwargs)
    elif isinstance(comp, Representation):
        check_representation(comp, **kwargs)
    elif isinstance(comp, Characterizer):
        rep = load("representation", kwargs.pop("representation", comp.consumes), device=device)
        assert isinstance(rep, Representation)
        signals = rep.represent(sample_batch().to(rep.device))["signal"]
        check_characterizer(comp, signals)
    return comp
