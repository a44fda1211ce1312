"""Tests of the ``mattergen`` generator component (CPU, one thread, a few seconds).

The generator is loaded from a crystal ``model.pt`` holding the tiny :class:`ToyDenoiser`; the
denoiser is then swapped for the exact ("oracle") one of ``mattergen_oracle`` where valid
crystals are needed, so that sampling must return cubic SrTiO3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from mattergen_oracle import PEROVSKITE_Z, OracleDenoiser

from crystal.components import GenerationConditions
from crystal.errors import ConfigError, WeightsError
from crystal.testing.contracts import check_declarations, check_generator
from crystal_mattergen.generator import RELEASED, WEIGHTS, MatterGenConfig, MatterGenGenerator
from crystal_mattergen.model import MatterGenModel, ToyDenoiser, load_model, save_model

torch.set_num_threads(1)
STEPS = 15  # enough for the exact denoiser to land on the crystal


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = MatterGenModel(ToyDenoiser(16, properties=("dft_band_gap",)), kind="toy", num_atoms_distribution={5: 1.0})
    return save_model(model, tmp_path_factory.mktemp("mg") / "model.pt", {"note": "test"})


def oracle_generator(path: Path, oracle_props: tuple[str, ...] = (), **cfg: object) -> MatterGenGenerator:
    gen = MatterGenGenerator(checkpoint=str(path), steps=STEPS, **cfg)
    gen.model.denoiser = OracleDenoiser(gen.model.diffusion, oracle_props)
    return gen


def test_model_file_round_trip(toy_file: Path, tmp_path: Path) -> None:
    model, meta = load_model(toy_file)
    assert meta == {"note": "test"} and model.kind == "toy" and model.num_atoms_distribution == {5: 1.0}
    assert model.property_names == ["dft_band_gap"]
    bad = tmp_path / "x.pt"
    torch.save({"format": "other"}, bad)
    with pytest.raises(WeightsError, match="not a crystal-mattergen"):
        load_model(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_contract_and_reproducibility(toy_file: Path) -> None:
    gen = oracle_generator(toy_file)
    check_declarations(gen)
    check_generator(gen, num_samples=2)
    a = gen.generate(2, seed=4)
    assert len(a) == 2 and a.ids == ["mattergen-4-0", "mattergen-4-1"]
    assert torch.equal(a.atomic_numbers, PEROVSKITE_Z.repeat(2))
    assert a.info[0]["weights"] == str(toy_file) and a.info[0]["steps"] == STEPS
    assert gen.last_report.num_valid == 2 and gen.last_report.rejected == []
    assert len(gen.generate(0, seed=1)) == 0


def test_batches_are_seeded_per_chunk(toy_file: Path) -> None:
    one = oracle_generator(toy_file, batch_size=2).generate(2, seed=9)
    two = oracle_generator(toy_file, batch_size=1).generate(2, seed=9)
    assert one.ids == two.ids  # same ids; chunking changes the noise stream only
    assert not torch.equal(one.lattices[1], two.lattices[1])


def test_invalid_samples_are_reported_rows(toy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    gen = MatterGenGenerator(checkpoint=str(toy_file), steps=5, min_distance=1.0)  # untrained: junk crystals
    with caplog.at_level(logging.INFO):
        batch = gen.generate(4, seed=0)
    report = gen.last_report
    assert report.num_sampled == 4 and report.num_valid == len(batch)
    assert len(batch) + len(report.rejected) == 4
    for row in report.rejected:
        assert set(row) == {"id", "sample", "reason"} and row["id"] not in batch.ids
    res = gen.generate_detailed(4, seed=0)  # the same call, with the reasons as RejectedSample rows
    assert res.batch.ids == batch.ids
    assert [(r.sample, r.reason) for r in res.rejected] == [(row["sample"], row["reason"]) for row in report.rejected]
    if report.rejected:
        assert "rejected" in caplog.text
    assert report.as_dict()["num_sampled"] == 4
    tight = oracle_generator(toy_file, max_volume_per_atom=1.0)  # SrTiO3: 11.9 Å^3/atom
    assert len(tight.generate(2, seed=0)) == 0
    assert [r["sample"] for r in tight.last_report.rejected] == [0, 1]
    assert "max_volume_per_atom" in tight.last_report.rejected[0]["reason"]


@pytest.mark.parametrize(
    ("conditions", "config", "field", "match"),
    [
        ({"composition": "SrTiO3"}, {}, "composition", "conditions.composition is not supported"),
        (
            {"chemical_system": ("Li", "O")},
            {},
            "chemical_system",
            "'mattergen-base' cannot condition on 'chemical_system'",
        ),
        ({"space_groups": (225,)}, {"weights": "mattergen-chemical-system"}, "space_groups", "mattergen-space-group"),
        ({}, {"properties": {"dft_band_gap": 1.5}}, None, "weights conditioned on it: mattergen-dft-band-gap"),
        ({"chemical_system": ("Li", "O")}, {"weights": "mattergen-chemical-system"}, None, None),
        ({"chemical_system": ("Li", "O")}, {"checkpoint": "later.pt"}, None, None),  # checked when loaded
    ],
)
def test_check_conditions_without_loading_weights(
    conditions: dict[str, Any], config: dict[str, Any], field: str | None, match: str | None
) -> None:
    from crystal.components import ConditionError

    cond = GenerationConditions(**conditions)
    if match is None:
        MatterGenGenerator.check_conditions(cond, config)
        return
    with pytest.raises(ConditionError, match=match) as info:
        MatterGenGenerator.check_conditions(cond, config)
    assert info.value.field == field


def test_guided_conditions(toy_file: Path) -> None:
    gen = oracle_generator(toy_file, ("dft_band_gap",), properties={"dft_band_gap": 1.5}, guidance_factor=2.0)
    batch = gen.generate(2, seed=1)
    calls = gen.model.denoiser.calls
    assert len(batch) == 2 and batch.info[0]["dft_band_gap"] == 1.5 and batch.info[0]["guidance_factor"] == 2.0
    # corrector + predictor per time point, each unconditional + conditional
    assert len(calls) == STEPS * 2 * 2 and gen.last_report.denoiser_evaluations == len(calls)
    assert sum(c is None for c in calls) == len(calls) // 2
    cond = next(c for c in calls if c is not None)
    assert torch.allclose(cond["dft_band_gap"], torch.tensor([1.5, 1.5]))
    gen.model.denoiser.calls.clear()
    gen1 = oracle_generator(toy_file, ("dft_band_gap",), properties={"dft_band_gap": 1.5}, guidance_factor=1.0)
    gen1.generate(1, seed=1)
    assert all(c is not None for c in gen1.model.denoiser.calls)


def test_unsupported_conditions_raise(toy_file: Path) -> None:
    gen = oracle_generator(toy_file)
    with pytest.raises(ConfigError, match="composition"):
        gen.generate(1, GenerationConditions(composition="SrTiO3"), seed=0)
    with pytest.raises(ConfigError, match=r"cannot condition on 'space_group'.*mattergen-space-group"):
        gen.generate(1, GenerationConditions(space_groups=(221,)), seed=0)
    with pytest.raises(ConfigError, match="chemical_system"):
        gen.generate(1, GenerationConditions(chemical_system=("Sr", "Ti", "O")), seed=0)
    with pytest.raises(ConfigError, match="dft_band_gap"):
        MatterGenGenerator(checkpoint=str(toy_file), properties={"dft_mag_density": 0.1})
    with pytest.raises(ConfigError):
        MatterGenGenerator(checkpoint=str(toy_file), properties={"band_gap": 1.0})
    with pytest.raises(ConfigError):
        MatterGenGenerator(checkpoint=str(toy_file), chemical_system="Li-Xx")
    with pytest.raises(ConfigError):
        MatterGenGenerator(checkpoint=str(toy_file), space_group=231)
    with pytest.raises(ConfigError):
        MatterGenGenerator(checkpoint=str(toy_file), nonsense=1)
    with pytest.raises(ConfigError, match="num_samples"):
        gen.generate(-1, seed=0)


def test_space_group_and_chemical_system_plans(toy_file: Path) -> None:
    gen = oracle_generator(toy_file, ("space_group", "chemical_system"))
    batch = gen.generate(4, GenerationConditions(space_groups=(221, 225), chemical_system=("Ti", "O", "Sr")), seed=2)
    assert {b["space_group"] for b in batch.info} <= {221, 225}
    assert {b["chemical_system"] for b in batch.info} == {"O-Sr-Ti"}
    cond = next(c for c in gen.model.denoiser.calls if c is not None)
    assert cond["chemical_system"] == ["O-Sr-Ti"] * 4 and cond["space_group"].dtype == torch.long


def test_released_weights_are_declared() -> None:
    assert WEIGHTS[0] == "mattergen-base" and len(WEIGHTS) == len(RELEASED) + 1
    for name in RELEASED:
        entry = WEIGHTS.entry(name)
        assert entry.remote and entry.sha256 and entry.size and entry.licence == "MIT"
    assert not WEIGHTS.entry("mattergen-perov5-demo").remote
    assert MatterGenConfig().weights is None
    with pytest.raises(ValueError):
        MatterGenConfig(weights="nope")


def test_released_configs_are_shipped_and_parse() -> None:
    from crystal_mattergen.checkpoint import config_from_mattergen_yaml, sde_settings
    from crystal_mattergen.model import diffusion_from_sde, released_config

    for name, (ref, *_rest) in RELEASED.items():
        cfg = released_config(ref)
        den = config_from_mattergen_yaml(cfg, ref)
        diff = diffusion_from_sde(sde_settings(cfg))
        assert diff.limit_density == pytest.approx(0.05771451654022283) and diff.d3pm_steps == 1000, name
        assert diff.pos_sigma_max == 5.0 and diff.lattice_beta_max == 20.0
        conds = set(den.property_embeddings) | set(den.property_embeddings_adapt)
        assert conds == set(RELEASED[name][3]), name


def test_offline_default_weights_fail_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from crystal_mattergen import generator as g

    g._load_named.cache_clear()
    monkeypatch.setenv("CRYSTAL_OFFLINE", "1")
    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="mattergen-base") as err:
        MatterGenGenerator()
    assert "huggingface.co/microsoft/mattergen" in str(err.value)


def test_gemnet_model_file_generates(tmp_path: Path) -> None:
    """The real GemNet-T denoiser (tiny widths) through model.pt and the generator."""
    from crystal_mattergen.denoiser import DenoiserConfig, MatterGenDenoiser

    small = {"hidden_dim": 16, "latent_dim": 16, "atom_embedding_size": 16, "emb_size_atom": 16, "emb_size_edge": 16}
    small |= {"emb_size_trip": 8, "emb_size_bil_trip": 8, "num_blocks": 1, "num_radial": 8, "max_neighbors": 8}
    torch.manual_seed(0)
    model = MatterGenModel(
        MatterGenDenoiser(DenoiserConfig(**small)), kind="gemnet", num_atoms_distribution={3: 0.5, 4: 0.5}
    )
    path = save_model(model, tmp_path / "model.pt")
    gen = MatterGenGenerator(checkpoint=str(path), steps=3, min_distance=0.0)
    batch = gen.generate(2, seed=0)
    report = gen.last_report
    assert report.num_sampled == 2 and len(batch) + len(report.rejected) == 2
    assert report.denoiser_evaluations == 3 * 2
    assert set(batch.num_atoms.tolist()) <= {3, 4}


def test_shipped_demo_weights_load_and_sample() -> None:
    from crystal.weights import resolve_weights

    path, entry = resolve_weights("mattergen-perov5-demo")  # package file, sha256-checked
    assert entry.size == path.stat().st_size
    gen = MatterGenGenerator(weights="mattergen-perov5-demo", steps=3, min_distance=0.0, max_volume_per_atom=None)
    batch = gen.generate(2, seed=0)
    assert len(batch) + len(gen.last_report.rejected) == 2
    assert gen.model.num_atoms_distribution == {5: 1.0} and gen.weights_in_use() == ("mattergen-perov5-demo",)
