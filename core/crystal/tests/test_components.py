from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from pydantic import Field

from crystal import ComponentConfig, ConfigError, Encoder, Kind, Potential, PotentialOutput
from crystal.batch import CrystalBatch


class _Cfg(ComponentConfig):
    scale: float = Field(1.0, gt=0, description="multiplier, dimensionless")


def test_abstract_methods_are_enforced():
    class Half(Potential):
        name = "half"
        version = "0"
        Config: ClassVar[type[ComponentConfig]] = _Cfg

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_declarations_are_enforced():
    with pytest.raises(TypeError, match="must declare 'name'"):

        class NoName(Potential):
            version = "0"

            def compute(self, batch, *, forces=True, stress=True):
                raise AssertionError


def test_config_must_forbid_extra():
    class Loose(ComponentConfig):
        model_config = {"extra": "allow"}  # noqa: RUF012

    with pytest.raises(TypeError, match="extra='forbid'"):

        class Bad(Encoder):
            name = "bad"
            version = "0"
            Config: ClassVar[type[ComponentConfig]] = Loose
            targets = ("x",)

            def predict(self, batch):
                return {}


def test_default_weights_must_be_listed():
    with pytest.raises(TypeError, match="default_weights"):

        class BadWeights(Encoder):
            name = "bw"
            version = "0"
            weights = ("a",)
            default_weights = "b"
            targets = ("x",)

            def predict(self, batch):
                return {}


class Scaled(Potential):
    """E = scale * (number of atoms); zero forces and stress."""

    name = "scaled"
    version = "1"
    Config: ClassVar[type[ComponentConfig]] = _Cfg
    elements = frozenset({1, 8})

    def compute(self, batch, *, forces=True, stress=True):
        cfg = self.config
        e = cfg.scale * batch.num_atoms.to(batch.dtype)
        return PotentialOutput(
            e,
            torch.zeros_like(batch.frac_coords) if forces else None,
            torch.zeros_like(batch.lattices) if stress else None,
        )


def test_config_validation_and_unknown_parameter():
    assert Scaled(device="cpu").config.scale == 1.0
    assert Scaled({"scale": 2.0}, device="cpu").config.scale == 2.0
    assert Scaled(device="cpu", scale=3.0).config.scale == 3.0
    with pytest.raises(ConfigError, match="'bogus': unknown parameter"):
        Scaled({"bogus": 1}, device="cpu")
    with pytest.raises(ConfigError, match="greater than 0"):
        Scaled({"scale": -1}, device="cpu")


def test_device_handling():
    assert Scaled(device="auto").device.type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not one of"):
        Scaled(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Scaled(device="cuda:0")


def test_potential_helpers_and_element_check():
    batch = CrystalBatch(
        atomic_numbers=torch.tensor([1, 8, 26]),
        frac_coords=torch.rand(3, 3, dtype=torch.float64),
        lattices=torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 5,
        num_atoms=torch.tensor([2, 1]),
    )
    pot = Scaled(device="cpu")
    assert pot.energy(batch).tolist() == [2.0, 1.0]
    assert pot.forces(batch).shape == (3, 3)
    assert pot.stress(batch).shape == (2, 3, 3)
    with pytest.raises(Exception, match="does not cover element"):
        pot.check_elements(batch)


def test_kind_parse():
    assert Kind.parse("potential") is Kind.POTENTIAL
    assert Kind.parse("encoders") is Kind.ENCODER
    assert Kind.POTENTIAL.group == "crystal.potentials"
    with pytest.raises(ConfigError, match="allowed"):
        Kind.parse("model")


def test_potential_check_geometry_names_the_crystals():
    import pytest
    from ase.build import bulk

    from crystal import CrystalBatch
    from crystal.errors import StructureError
    from crystal.testing import LennardJones

    pot = LennardJones(device="cpu")
    batch = CrystalBatch.from_atoms([bulk("Ar", "fcc", a=5.3), bulk("Ar", "fcc", a=5.3)])
    pot.check_geometry(batch)
    batch.ids[1] = "bad-one"
    batch.frac_coords[1, 0] = float("nan")
    with pytest.raises(StructureError, match=r"crystal\(s\) 'bad-one' have NaN or inf coordinates"):
        pot.check_geometry(batch)
    from crystal import PotentialOutput

    empty = PotentialOutput.empty(CrystalBatch.empty(), forces=True, stress=False)
    assert empty.energy.shape == (0,) and empty.forces.shape == (0, 3) and empty.stress is None


def test_strict_model_is_the_base_of_component_configs():
    from pydantic import ValidationError

    from crystal.config import StrictModel, format_validation_error

    class Opts(StrictModel):
        steps: int = 1

    assert issubclass(ComponentConfig, StrictModel)
    assert ComponentConfig.model_config["validate_default"] is True
    with pytest.raises(ValidationError) as err:
        Opts(stpes=3)
    assert format_validation_error(err.value, "relax") == "relax: field 'stpes': unknown parameter"
    with pytest.raises(ValidationError, match="frozen"):
        Opts().steps = 2  # type: ignore[misc]


def test_dataset_and_metric_specs_live_with_their_hooks():
    import crystal.hookspecs
    import crystal.registries

    assert crystal.registries.DatasetSpec is crystal.hookspecs.DatasetSpec
    assert crystal.registries.MetricSpec is crystal.hookspecs.MetricSpec
