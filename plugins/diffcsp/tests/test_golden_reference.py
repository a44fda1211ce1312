"""Parity with the reference DiffCSP (jiaor17/DiffCSP) on a fixture it wrote: golden/make_golden.py.

``golden/run/`` is a released-format run (Lightning ``epoch=0-step=1.ckpt`` + Hydra
``hparams.yaml``) of a small random-weight CSPDiffusion; ``golden/reference_outputs.pt`` holds
the reference's CSPNet outputs and predictor–corrector steps with the noise it drew. The
reference package is not needed here. Tolerances (float32): see the plugin README.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from crystal.checkpoint_formats import load_lightning_checkpoint
from crystal.errors import WeightsError
from crystal_diffcsp.checkpoint import (
    config_from_reference,
    load_checkpoint,
    load_reference_checkpoint,
    reference_state_dict,
)
from crystal_diffcsp.graph import fully_connected_edges

GOLDEN = Path(__file__).parent / "golden"
RUN = GOLDEN / "run"
CKPT = RUN / "epoch=0-step=1.ckpt"
RUN_AB = GOLDEN / "run_ab_initio"

#: float32 tolerances, relative to the largest magnitude of the compared tensor
NET_RTOL = 1e-5
STEP_RTOL = 1e-5

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason="golden fixture not generated")


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(GOLDEN / "reference_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    m, meta = load_reference_checkpoint(RUN)
    assert meta["global_step"] == 1 and meta["source"].endswith("epoch=0-step=1.ckpt")
    return m


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> float:
    err = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    assert err <= rtol * max(scale, 1.0), f"max abs error {err:.3g} (scale {scale:.3g})"
    return err


def _periodic_close(ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> None:
    d = torch.remainder(ours - theirs + 0.5, 1.0) - 0.5
    assert float(d.abs().max()) <= atol, f"max periodic error {float(d.abs().max()):.3g}"


def test_config_read_from_the_released_format(model) -> None:  # type: ignore[no-untyped-def]
    c = model.config
    assert (c.mode, c.hidden_dim, c.num_layers, c.num_freqs, c.time_dim) == ("csp", 16, 2, 4, 8)
    assert (c.timesteps, c.beta_schedule, c.layer_norm) == (1000, "cosine", True)
    assert c.sigma_begin == pytest.approx(0.005) and c.sigma_end == pytest.approx(0.5)
    ckpt = load_lightning_checkpoint(CKPT)  # the .ckpt alone: its hyper_parameters are checked
    assert config_from_reference(ckpt["state_dict"], ckpt["hyper_parameters"], str(CKPT)) == c
    assert ckpt["hyper_parameters"]["decoder"]["hidden_dim"] == 16
    ours = reference_state_dict(ckpt["state_dict"], c.num_layers)
    assert set(ours) == set(model.state_dict()) - {"num_atoms_counts"}
    for key, value in ours.items():
        assert torch.equal(model.state_dict()[key], value)
    # the reference's Monte Carlo score normalisers are used, not our quadrature
    assert torch.equal(model.sigma.sigmas_norm, ckpt["state_dict"]["sigma_scheduler.sigmas_norm"])


def test_cspnet_matches_reference(model, ref) -> None:  # type: ignore[no-untyped-def]
    r = ref["net"]
    num_atoms = r["num_atoms"]
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    with torch.no_grad():
        temb = model.time_embedding(r["times"])
        pred_l, pred_f, _ = model.net(temb, r["atom_types"], r["frac_coords"], r["lattices"], num_atoms, batch)
    _close(pred_l, r["pred_l"], NET_RTOL)
    _close(pred_f, -r["pred_x"], NET_RTOL)  # the reference predicts −score, we +score (weights negated)
    assert float(r["pred_x"].abs().max()) > 1e-2 and float(r["pred_l"].abs().max()) > 1e-2


def _steps(model, ref_part, atom_types, num_atoms, times):  # type: ignore[no-untyped-def]
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    edges = fully_connected_edges(num_atoms)
    frac, lat = torch.remainder(ref_part["x_T"], 1.0), ref_part["l_T"]
    states = []
    for t, (_, noise_c, noise_l, noise_f) in zip(times, ref_part["noise"], strict=True):
        frac, lat, _ = model.reverse_step(
            t, t - 1, atom_types, frac, lat, num_atoms, batch, edges,
            step_lr=float(ref_part["step_lr"]), noise_corrector=noise_c, noise_f=noise_f, noise_l=noise_l,
        )  # fmt: skip
        states.append((frac, lat))
    return states


def test_first_reverse_steps_match_reference(model, ref) -> None:  # type: ignore[no-untyped-def]
    r = ref["first"]
    states = _steps(model, r, ref["net"]["atom_types"], ref["net"]["num_atoms"], [1000, 999])
    for k, (frac, lat) in enumerate(states):
        _close(lat, r["lat_after"][k], STEP_RTOL)
        _periodic_close(frac, r["frac_after"][k], 1e-5)
    assert not torch.allclose(states[0][1], states[1][1])


def test_last_reverse_steps_match_reference(model, ref) -> None:  # type: ignore[no-untyped-def]
    r = ref["last"]
    (_, _), (frac, lat) = _steps(model, r, ref["net"]["atom_types"], ref["net"]["num_atoms"], [2, 1])
    _close(lat, r["lattices"], STEP_RTOL)
    _periodic_close(frac, r["frac_coords"], 1e-5)


def test_ab_initio_matches_reference(ref) -> None:  # type: ignore[no-untyped-def]
    model, _ = load_reference_checkpoint(RUN_AB / "epoch=0-step=1.ckpt")
    assert model.config.mode == "ab_initio" and model.net.type_out is not None
    r, a = ref["net"], ref["ab_initio_net"]
    num_atoms = r["num_atoms"]
    batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    with torch.no_grad():
        temb = model.time_embedding(r["times"])
        pred_l, pred_f, pred_a = model.net(temb, a["types"], r["frac_coords"], r["lattices"], num_atoms, batch)
    _close(pred_l, a["pred_l"], NET_RTOL)
    _close(pred_f, -a["pred_x"], NET_RTOL)
    _close(pred_a, a["pred_t"], NET_RTOL)
    f = ref["ab_initio_first"]
    _, _, noise_c, noise_l, noise_t, noise_f = f["noise"]
    frac, lat, types = model.reverse_step(
        1000, 999, f["t_T"], torch.remainder(f["x_T"], 1.0), f["l_T"], num_atoms, batch,
        step_lr=float(f["step_lr"]), noise_corrector=noise_c, noise_f=noise_f, noise_l=noise_l, noise_a=noise_t,
    )  # fmt: skip
    _close(lat, f["lat_after"], STEP_RTOL)
    _close(types, f["types_after"], STEP_RTOL)
    _periodic_close(frac, f["frac_after"], 1e-5)


def test_generator_accepts_a_released_run(tmp_path: Path) -> None:
    from crystal.components import GenerationConditions
    from crystal_diffcsp.generator import DiffCSPGenerator

    gen = DiffCSPGenerator(checkpoint=str(RUN), steps=3, min_distance=0.0)
    out = gen.generate(1, GenerationConditions(composition="NaCl", formula_units=(1,)), seed=0)
    assert len(out) <= 1


def _copy_run(tmp_path: Path, edit: tuple[str, str]) -> Path:
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    text = (run / "hparams.yaml").read_text()
    assert edit[0] in text
    (run / "hparams.yaml").write_text(text.replace(*edit, 1))
    return run


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("edge_style: fc", "edge_style: knn"), "edge_style"),
        (("hidden_dim: 16", "hidden_dim: 32"), "hidden_dim"),
        (("diffusion.CSPDiffusion", "diffusion_w_type.CSPDiffusion"), "_target_"),
    ],
)
def test_unsupported_or_mismatched_hparams_are_refused(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        load_reference_checkpoint(_copy_run(tmp_path, edit))


def test_load_checkpoint_dispatches_on_ckpt_suffix(tmp_path: Path) -> None:
    bad = tmp_path / "epoch=3-step=9.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(WeightsError, match="not a DiffCSP CSPDiffusion state dict"):
        load_checkpoint(bad)


def test_folder_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"no \*\.ckpt"):
        load_reference_checkpoint(tmp_path)
