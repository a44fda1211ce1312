"""`crystal plugins check NAME` runs the contract suite: a flipped stress fails (issue 15)."""

from __future__ import annotations

POTENTIALS = """
from crystal.testing.potentials import LennardJones


class GoodLJ(LennardJones):
    name = "good-lj"
    description = "Lennard-Jones, right stress"


class FlippedStressLJ(LennardJones):
    name = "flipped-stress-lj"
    description = "Lennard-Jones with the stress sign flipped"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None:
            out.stress = -out.stress
        return out


class PerAtomStressLJ(LennardJones):
    name = "per-atom-stress-lj"
    description = "Lennard-Jones with the stress divided by the atom count"

    def compute(self, batch, *, forces=True, stress=True):
        out = super().compute(batch, forces=forces, stress=stress)
        if out.stress is not None:
            out.stress = out.stress / batch.num_atoms.to(out.stress.dtype)[:, None, None]
        return out
"""


def _install(fake_distribution):
    from crystal.manifest import compile_manifest, render_manifest

    entry_points = {
        "crystal.potentials": {
            "good-lj": "fake_stress_check.pot:GoodLJ",
            "flipped-stress-lj": "fake_stress_check.pot:FlippedStressLJ",
            "per-atom-stress-lj": "fake_stress_check.pot:PerAtomStressLJ",
        },
        "crystal.manifests": {"fake-stress-check": "fake_stress_check:crystal_plugin.toml"},
    }
    files = {"fake_stress_check/__init__.py": "", "fake_stress_check/pot.py": POTENTIALS}
    fake_distribution("fake-stress-check", entry_points, files, metadata={"Summary": "potentials with wrong stress"})
    manifest = render_manifest(compile_manifest("fake-stress-check"), "fake-stress-check")
    (fake_distribution.site / "fake_stress_check" / "crystal_plugin.toml").write_text(manifest, encoding="utf-8")
    fake_distribution.refresh()


def test_plugins_check_names_run_the_contracts(fake_distribution, capsys):
    from crystal_cli.main import main

    _install(fake_distribution)
    assert main(["plugins", "check", "good-lj"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert main(["plugins", "check", "flipped-stress-lj", "per-atom-stress-lj"]) == 1
    out = capsys.readouterr().out
    assert "FAIL potential flipped-stress-lj" in out and "FAIL potential per-atom-stress-lj" in out
    assert out.count("contract:") == 2 and "stress" in out


def test_plugins_check_without_contracts_only_checks_manifests(fake_distribution, capsys):
    from crystal_cli.main import main

    _install(fake_distribution)
    assert main(["plugins", "check", "flipped-stress-lj", "--no-contracts"]) == 0, capsys.readouterr().out


def test_plugins_check_unknown_name(capsys):
    from crystal_cli.main import main

    assert main(["plugins", "check", "no-such-component"]) == 2
    assert "no-such-component" in capsys.readouterr().err
