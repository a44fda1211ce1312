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
