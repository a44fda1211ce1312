"""Every encoder weights file we ship: found by name through the manifests, sha256-verified,
loaded weights-only, and clearly better than predicting the mean on held-out data.

The held-out data is the test split named in the weights' ``training_data`` (Perov-5 or
Carbon-24 ``test.csv`` in ``../shared/data``; skipped with a reason where it is absent).
"""

from __future__ import annotations

import pytest

from crystal.weights import list_weights

DATASETS = {"Perov-5": "perov_5", "Carbon-24": "carbon_24"}


def _shipped(manifest) -> set[str]:
    """Weights trained by crystal and shipped in the package (the authors' released ones are
    downloads, checked by each plugin's parity tests on reference-made fixtures)."""
    return {w.name for w in manifest.weights if w.file.startswith("package:")}


def _encoder_weights() -> list[tuple[str, str]]:
    from crystal.plugins import manifests

    out = []
    for _dist, (manifest, _err) in sorted(manifests().items()):
        if manifest is None:
            continue
        for comp in manifest.components:
            if comp.kind == "encoder":
                out += [(comp.name, w) for w in comp.weights if w in _shipped(manifest)]
    return out


@pytest.mark.parametrize(("encoder", "weights"), _encoder_weights())
def test_shipped_encoder_weights_beat_the_mean(encoder, weights, shared_data):
    from crystal import load
    from crystal_train import evaluate, read_labelled

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


def _potential_weights() -> list[tuple[str, str]]:
    from crystal.plugins import manifests

    out = []
    for _dist, (manifest, _err) in sorted(manifests().items()):
        if manifest is None:
            continue
        for comp in manifest.components:
            if comp.kind == "potential" and comp.name == "mace":
                out += [(comp.name, w) for w in comp.weights if w in _shipped(manifest)]
    return out


@pytest.mark.parametrize(("potential", "weights"), _potential_weights())
def test_shipped_potential_weights_reproduce_their_test_metrics(potential, weights, shared_data):
    """Trained potentials we ship reproduce the test metrics in their manifest on the official
    mlearn test split, and beat the trivial baselines (zero forces; mean energy per atom)."""
    import torch

    from crystal import load
    from crystal.targets import TargetSpec
    from crystal_train import read_labelled
    from crystal_train.potential import evaluate_potential

    entry = list_weights()[weights][1]
    assert entry.training_data.startswith("mlearn"), entry.training_data
    element = entry.training_data.split(")", 1)[1].split(":")[0].strip()  # "mlearn (Zuo et al. 2020) Li: ..."
    pot = load("potential", potential, weights=weights, device="cpu")
    assert pot.trained and pot.checkpoint_sha256 == entry.sha256 and pot.config.elements == (element,)
    specs = [TargetSpec(name="energy"), TargetSpec(name="forces", level="atom", dim=3)]
    test = read_labelled([shared_data / "mlearn" / element / "test.xyz"], specs).batch
    metrics, _ = evaluate_potential(pot, test)
    assert metrics["energy_mae_mev_per_atom"] == pytest.approx(entry.metrics["test_energy_mae_meV_per_atom"], rel=1e-3)
    assert metrics["forces_mae"] == pytest.approx(entry.metrics["test_forces_mae_eV_per_A"], rel=1e-3)
    per_atom = test.crystal_properties["energy"] / test.num_atoms
    assert metrics["forces_mae"] < 0.5 * float(test.atom_properties["forces"].abs().mean())
    assert metrics["energy_mae_mev_per_atom"] < 1000 * float((per_atom - per_atom.mean()).abs().mean())
    assert torch.isfinite(torch.tensor(list(metrics.values()))).all()
