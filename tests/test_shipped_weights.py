"""Every encoder weights file we ship: found by name through the manifests, sha256-verified,
loaded weights-only, and clearly better than predicting the mean on held-out data.

The held-out data is the test split named in the weights' ``training_data`` (Perov-5 or
Carbon-24 ``test.csv`` in ``../shared/data``; skipped with a reason where it is absent).
"""

from __future__ import annotations

import pytest

from crystal.weights import list_weights

DATASETS = {"Perov-5": "perov_5", "Carbon-24": "carbon_24"}


def _encoder_weights() -> list[tuple[str, str]]:
    from crystal.plugins import manifests

    out = []
    for _dist, (manifest, _err) in sorted(manifests().items()):
        if manifest is None:
            continue
        for comp in manifest.components:
            if comp.kind == "encoder":
                out += [(comp.name, w) for w in comp.weights]
    return out


@pytest.mark.parametrize(("encoder", "weights"), _encoder_weights())
def test_shipped_encoder_weights_beat_the_mean(encoder, weights, shared_data):
    from crystal import load
    from crystal.training import evaluate, read_labelled

    entry = list_weights()[weights][1]
    dataset = next((d for name, d in DATASETS.items() if entry.training_data.startswith(name)), None)
    assert dataset is not None, f"{weights}: training_data must name its data set ({entry.training_data!r})"
    assert any(k.startswith("test_") for k in entry.metrics), f"{weights}: the manifest must report test metrics"
    enc = load("encoder", encoder, weights=weights, device="cpu")
    assert enc.trained and enc.checkpoint_sha256 == entry.sha256
    data = read_labelled([shared_data / dataset / "test.csv"], enc.target_set.specs, limit=120).batch
    _, metrics = evaluate(enc, data)
    for spec in enc.target_set.specs:
        truth = data.crystal_properties[spec.name]
        baseline = float((truth - truth.mean()).abs().mean())
        assert metrics[f"{spec.name}_mae"] < 0.5 * baseline, (weights, metrics, baseline)
