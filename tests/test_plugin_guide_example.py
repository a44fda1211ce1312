"""The potential example of docs/plugin-guide.md runs and passes crystal.testing's potential
checks, including the stress-by-finite-differences check (issue 15)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from crystal.testing import assert_stress_matches_finite_differences, check_potential_symmetries
from crystal.testing.contracts import check_potential, sample_batch, strained_batch

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugin-guide.md"


@pytest.fixture(scope="module")
def morse_module(tmp_path_factory):
    text = GUIDE.read_text(encoding="utf-8")
    m = re.search(r"<!-- example: morse-potential -->\n```python\n(.*?)```", text, re.S)
    assert m, "docs/plugin-guide.md lost its marked potential example"
    path = tmp_path_factory.mktemp("guide") / "guide_morse.py"
    path.write_text(m.group(1), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("guide_morse", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["guide_morse"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("guide_morse", None)


def test_guide_potential_passes_the_contract(morse_module):
    pot = morse_module.Morse(device="cpu")
    check_potential(pot, atol=1e-8, fd_atol=1e-6)  # includes the strained-cell stress check


def test_guide_potential_stress_and_forces_are_exact(morse_module):
    pot = morse_module.Morse(device="cpu")
    assert_stress_matches_finite_differences(pot, strained_batch(), delta=1e-4, atol=1e-8, rtol=1e-6)
    stress = pot.stress(strained_batch())
    assert bool((stress.abs().amax(dim=(1, 2)) > 1e-3).all())  # the check is not vacuous
    check_potential_symmetries(pot, sample_batch(), atol=1e-9, dtype_atol=1e-4)


def test_guide_potential_with_a_flipped_stress_fails(morse_module):
    class Flipped(morse_module.Morse):
        name = "flipped-morse"

        def compute(self, batch, *, forces=True, stress=True):
            out = super().compute(batch, forces=forces, stress=stress)
            if out.stress is not None:
                out.stress = -out.stress
            return out

    with pytest.raises(AssertionError, match="sign is flipped"):
        check_potential(Flipped(device="cpu"), atol=1e-8, fd_atol=1e-6)


def test_guide_potential_works_under_no_grad(morse_module):
    pot = morse_module.Morse(device="cpu")
    with torch.no_grad():
        out = pot.compute(sample_batch())
    assert out.forces is not None and torch.isfinite(out.forces).all()
