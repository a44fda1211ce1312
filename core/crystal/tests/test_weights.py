from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from crystal import WeightsError
from crystal.manifest import WeightsManifest
from crystal.weights import find_weights, list_weights, load_state_dict, resolve_weights


def _entry(path: Path, sha: str | None = None, name: str = "w") -> WeightsManifest:
    return WeightsManifest(
        name=name,
        file=str(path),
        sha256=sha or hashlib.sha256(path.read_bytes()).hexdigest(),
        licence="MIT",
        training_data="none (test)",
    )


def test_state_dict_round_trip_with_checksum(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"layer.weight": torch.arange(6.0).reshape(2, 3)}, path)
    sd = load_state_dict(_entry(path))
    assert torch.equal(sd["layer.weight"], torch.arange(6.0).reshape(2, 3))


def test_checksum_mismatch_is_an_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2)}, path)
    entry = _entry(path)
    torch.save({"a": torch.ones(2)}, path)  # file replaced after registration
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights(entry)


def test_pickled_modules_are_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="weights-only"):
        load_state_dict(_entry(path))


def test_missing_file(tmp_path):
    entry = WeightsManifest(
        name="gone", file=str(tmp_path / "nope.pt"), sha256="0" * 64, licence="MIT", training_data="-"
    )
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(entry)


def test_registry_from_manifests_and_package_resources(fake_distribution):
    blob = fake_distribution.site / "fake_w" / "weights" / "tiny.pt"
    blob.parent.mkdir(parents=True)
    torch.save({"x": torch.tensor([1.0, 2.0])}, blob)
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    manifest = f'''
[plugin]
description = "weights only"

[[weights]]
name = "fake-tiny"
file = "package:fake_w/weights/tiny.pt"
sha256 = "{sha}"
licence = "CC-BY-4.0"
training_data = "synthetic"
metrics = {{ mae_eV = 0.1 }}
'''
    fake_distribution(
        "fake-w",
        {"crystal.manifests": {"fake-w": "fake_w:crystal_plugin.toml"}},
        {"fake_w/__init__.py": "", "fake_w/crystal_plugin.toml": manifest},
    )
    assert list_weights()["fake-tiny"][0] == "fake-w"
    assert find_weights("fake-tiny").metrics == {"mae_eV": 0.1}
    assert torch.equal(load_state_dict("fake-tiny")["x"], torch.tensor([1.0, 2.0]))
    with pytest.raises(WeightsError, match="did you mean 'fake-tiny'"):
        find_weights("fake-tiny2")
