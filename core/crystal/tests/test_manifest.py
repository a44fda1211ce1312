from __future__ import annotations

import pytest

from crystal.errors import PluginError
from crystal.manifest import read_manifest


def test_strict_schema_names_file_and_field(tmp_path):
    path = tmp_path / "crystal_plugin.toml"
    path.write_text(
        '[plugin]\ndescription = "x"\n\n[[components]]\nkind = "model"\nname = "a"\ndescription = "b"\ncolour = 1\n'
    )
    with pytest.raises(PluginError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert str(path) in msg and "components.0.kind" in msg and "colour" in msg


def test_default_weights_must_be_listed(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(
        '[plugin]\ndescription = "x"\n\n[[components]]\nkind = "encoder"\nname = "a"\n'
        'description = "b"\nweights = ["w1"]\ndefault_weights = "w2"\n'
    )
    with pytest.raises(PluginError, match="default_weights"):
        read_manifest(path)


def test_malformed_toml(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[plugin\n")
    with pytest.raises(PluginError, match="cannot read plugin manifest"):
        read_manifest(path)


# ------------------------------------------------------------------ generated manifests
GENERATED = '''
from typing import Annotated, ClassVar

from pydantic import Field

from crystal import ComponentConfig, Encoder, Potential
from crystal.manifest import NamedWeights, WeightsManifest

WEIGHTS = NamedWeights(
    WeightsManifest(
        name="fake-w1",
        file="package:fake_gen/w1.pt",
        sha256="0" * 64,
        licence="MIT",
        training_data="nothing \\\\ really \\"quoted\\"",
        metrics={"mae_eV": 0.5, "epochs": 3, "split": "90/10"},
    ),
    WeightsManifest(name="fake-w2", file="package:fake_gen/w2.pt", sha256="1" * 64, licence="MIT", training_data="x"),
)


class Cfg(ComponentConfig):
    weights: Annotated[str, WEIGHTS] | None = Field(None, description="shipped weights")


class Enc(Encoder):
    """First docstring line is the fallback description.

    More text.
    """

    name = "fake-enc"
    version = "1.0"
    Config: ClassVar[type[ComponentConfig]] = Cfg
    weights = WEIGHTS
    default_weights = "fake-w2"

    @property
    def targets(self):
        return ("x",)

    def predict(self, batch):
        return {}


class Pot(Potential):
    name = "fake-pot"
    version = "1.0"
    description = "a potential"
    devices = ("cpu",)

    def compute(self, batch, *, forces=True, stress=True):
        raise NotImplementedError
'''

METADATA = (
    "Metadata-Version: 2.4\nName: fake-gen\nVersion: 1.0\nSummary: fake   generated plugin\n"
    "License-Expression: MIT\nProject-URL: Source, https://example.org/src\nProject-URL: Homepage, https://example.org\n"
)


@pytest.fixture
def gen_site(fake_distribution):
    fake_distribution(
        "fake-gen",
        {
            "crystal.potentials": {"fake-pot": "fake_gen.comp:Pot"},
            "crystal.encoders": {"fake-enc": "fake_gen.comp:Enc"},
            "crystal.manifests": {"fake-gen": "fake_gen:crystal_plugin.toml"},
        },
        {"fake_gen/__init__.py": "", "fake_gen/comp.py": GENERATED},
    )
    (fake_distribution.site / "fake_gen-1.0.dist-info" / "METADATA").write_text(METADATA)
    return fake_distribution.site


def test_compile_render_roundtrip_and_drift(gen_site):
    from crystal.manifest import compile_manifest, manifest_diff, manifest_file, render_manifest

    manifest = compile_manifest("fake-gen")
    assert manifest.plugin.description == "fake generated plugin"
    assert (manifest.plugin.homepage, manifest.plugin.licence) == ("https://example.org", "MIT")
    # sorted by kind (the order of KINDS), then name; weights in declaration order
    assert [(c.kind, c.name) for c in manifest.components] == [("encoder", "fake-enc"), ("potential", "fake-pot")]
    enc, pot = manifest.components
    assert enc.description == "First docstring line is the fallback description."
    assert (enc.weights, enc.default_weights) == (("fake-w1", "fake-w2"), "fake-w2")
    assert (pot.description, pot.devices, pot.produces) == ("a potential", ("cpu",), "energy+forces+stress")
    assert [w.name for w in manifest.weights] == ["fake-w1", "fake-w2"]

    text = render_manifest(manifest, "fake-gen")
    assert text.startswith("# Static manifest of fake-gen, GENERATED")
    assert "crystal plugins manifest fake-gen --write" in text
    assert render_manifest(compile_manifest("fake-gen"), "fake-gen") == text  # deterministic
    path = manifest_file("fake-gen")
    assert path == gen_site / "fake_gen" / "crystal_plugin.toml" and not path.exists()
    assert "+[plugin]" in manifest_diff("fake-gen")  # missing file: everything is drift
    path.write_text(text, encoding="utf-8")
    assert read_manifest(path) == manifest  # what listing reads is what the classes say
    assert read_manifest(path).weights[0].metrics == {"mae_eV": 0.5, "epochs": 3, "split": "90/10"}
    assert manifest_diff("fake-gen") == ""
    path.write_text(text.replace('description = "a potential"', 'description = "edited by hand"'), encoding="utf-8")
    diff = manifest_diff("fake-gen")
    assert '-description = "edited by hand"' in diff and '+description = "a potential"' in diff


def test_config_accepts_exactly_the_declared_weights(gen_site):
    from fake_gen.comp import WEIGHTS, Cfg, Enc
    from pydantic import ValidationError

    from crystal.errors import ConfigError

    assert WEIGHTS == ("fake-w1", "fake-w2") and "fake-w1" in Enc.weights
    assert WEIGHTS.entry("fake-w2").training_data == "x"
    assert Cfg(weights="fake-w1").weights == "fake-w1" and Cfg().weights is None
    with pytest.raises(ValidationError, match=r"unknown weights 'fake-w3'; did you mean 'fake-w2' or 'fake-w1'\?"):
        Cfg(weights="fake-w3")
    with pytest.raises(
        ConfigError, match=r"field 'weights': unknown weights 'w1' \(choose from 'fake-w1', 'fake-w2'\)"
    ):
        Enc.make_config({"weights": "w1"})
    schema = Cfg.model_json_schema()["properties"]["weights"]
    assert {"enum": ["fake-w1", "fake-w2"], "type": "string"} in schema["anyOf"]


def test_named_weights_errors_and_pickling():
    import pickle

    from crystal.manifest import NamedWeights, WeightsManifest

    entry = WeightsManifest(name="a", file="x.pt", sha256="0" * 64, licence="MIT", training_data="d")
    named = NamedWeights(entry)
    assert pickle.loads(pickle.dumps(named)) == named and pickle.loads(pickle.dumps(named)).entries == (entry,)
    assert repr(named) == "NamedWeights('a')"
    with pytest.raises(ValueError, match="declared twice"):
        NamedWeights(entry, entry)
    with pytest.raises(TypeError, match="WeightsManifest"):
        NamedWeights("a")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="declared: a"):
        named.entry("b")


def test_compile_errors_name_the_fix(gen_site, fake_distribution):
    from crystal.errors import PluginNotFoundError
    from crystal.manifest import compile_manifest

    with pytest.raises(PluginNotFoundError, match="not installed"):
        compile_manifest("no-such-dist")
    comp = gen_site / "fake_gen" / "comp.py"
    comp.write_text(GENERATED.replace("weights = WEIGHTS", 'weights = ("fake-w1", "fake-w2")'))
    with pytest.raises(PluginError, match="without declaring them: set `weights = NamedWeights"):
        compile_manifest("fake-gen")
    (gen_site / "fake_gen-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-gen\nVersion: 1.0\n"
    )
    comp.write_text(GENERATED)
    fake_distribution.forget_modules("fake_gen")
    with pytest.raises(PluginError, match=r"no description: set `description` in \[project\]"):
        compile_manifest("fake-gen")
