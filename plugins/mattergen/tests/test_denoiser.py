"""MatterGen denoiser: parity with the reference implementation on the golden fixture
(``tests/golden``, made by ``golden/make_golden.py`` with microsoft/mattergen 1.0.3), loading of
the released checkpoint format, and symmetries."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crystal.errors import WeightsError
from crystal_mattergen.checkpoint import config_from_mattergen_yaml, load_mattergen_checkpoint
from crystal_mattergen.denoiser import (
    MASK_TOKEN,
    DenoiserConfig,
    MatterGenDenoiser,
    PropertyEmbeddingConfig,
    mask_disallowed_elements,
)

GOLDEN = Path(__file__).parent / "golden"
ATOL = 1e-5  # float32; outputs are O(0.1-10)
RTOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, np.ndarray], dict]:
    arrays = dict(np.load(GOLDEN / "golden.npz"))
    meta = json.loads((GOLDEN / "golden.json").read_text())
    return arrays, meta


@pytest.fixture(scope="module")
def base_model() -> MatterGenDenoiser:
    return load_mattergen_checkpoint(GOLDEN / "base")[0]


@pytest.fixture(scope="module")
def adapter_model() -> MatterGenDenoiser:
    return load_mattergen_checkpoint(GOLDEN / "adapter")[0]


def _inputs(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    num_atoms = torch.from_numpy(arrays["in_num_atoms"])
    return {
        "frac_coords": torch.from_numpy(arrays["in_frac_coords"]),
        "lattice": torch.from_numpy(arrays["in_lattice"]),
        "atom_types": torch.from_numpy(arrays["in_atom_types"]),
        "num_atoms": num_atoms,
        "batch": torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms),
        "t": torch.from_numpy(arrays["in_t"]),
    }


def _conditions(arrays: dict[str, np.ndarray], meta: dict) -> tuple[dict, dict]:
    conditions = {
        "chemical_system": list(meta["chemical_system"]),
        "dft_band_gap": torch.from_numpy(arrays["in_dft_band_gap"]),
        "space_group": torch.from_numpy(arrays["in_space_group"]),
        "ml_bulk_modulus": torch.from_numpy(arrays["in_ml_bulk_modulus"]),
    }
    unconditional = {k: torch.from_numpy(arrays[f"in_uncond_{k}"]) for k in meta["adapter_properties"]}
    return conditions, unconditional


def _compare(out, arrays: dict[str, np.ndarray], prefix: str) -> None:
    np.testing.assert_allclose(out.frac_score.numpy(), arrays[f"{prefix}_pos"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.lattice_score.numpy(), arrays[f"{prefix}_cell"], rtol=RTOL, atol=ATOL)
    # masked logits are -1e10 + O(1): compare relative there
    np.testing.assert_allclose(out.type_logits.numpy(), arrays[f"{prefix}_atomic_numbers"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("masked", [False, True])
def test_base_matches_reference(golden, base_model, masked: bool) -> None:
    arrays, _ = golden
    with torch.no_grad():
        out = base_model(**_inputs(arrays), mask_elements=masked)
    _compare(out, arrays, "base_uncond_masked" if masked else "base_uncond")


@pytest.mark.parametrize(("conditional", "masked"), [(False, False), (False, True), (True, False), (True, True)])
def test_adapter_matches_reference(golden, adapter_model, conditional: bool, masked: bool) -> None:
    arrays, meta = golden
    conditions, unconditional = _conditions(arrays, meta) if conditional else (None, None)
    with torch.no_grad():
        out = adapter_model(**_inputs(arrays), conditions=conditions, unconditional=unconditional, mask_elements=masked)
    name = ("cond" if conditional else "uncond") + ("_masked" if masked else "")
    _compare(out, arrays, f"adapter_{name}")


def test_parameter_counts_match_reference(golden, base_model, adapter_model) -> None:
    _, meta = golden
    assert sum(p.numel() for p in base_model.parameters()) == meta["cases"]["base_n_params"]
    assert sum(p.numel() for p in adapter_model.parameters()) == meta["cases"]["adapter_n_params"]


def test_conditions_change_the_output_and_unconditional_flags_select(golden, adapter_model) -> None:
    arrays, meta = golden
    inputs = _inputs(arrays)
    conditions, _ = _conditions(arrays, meta)
    with torch.no_grad():
        uncond = adapter_model(**inputs)
        cond = adapter_model(**inputs, conditions=conditions)
        all_off = adapter_model(
            **inputs, conditions=conditions, unconditional={k: torch.ones(3, dtype=torch.bool) for k in conditions}
        )
    assert not torch.allclose(uncond.lattice_score, cond.lattice_score)
    torch.testing.assert_close(all_off.lattice_score, uncond.lattice_score)
    torch.testing.assert_close(all_off.type_logits, uncond.type_logits)


def test_unknown_condition_is_refused(golden, base_model) -> None:
    arrays, _ = golden
    with pytest.raises(ValueError, match="dft_band_gap"):
        base_model(**_inputs(arrays), conditions={"dft_band_gap": torch.ones(3)})


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.det(q))


def test_symmetries(golden, base_model) -> None:
    """Rotation: fractional score and logits invariant, lattice score R S Rᵀ; translation of all
    fractional coordinates and permutation of the atoms of a crystal: invariant/equivariant.

    The released models keep the 50 nearest neighbours, a hard cut that rounding can move
    between near-equidistant neighbours; the symmetry checks keep all neighbours in the cutoff
    and run in float64 (the random weights amplify float32 rounding to ~1e-5 relative)."""
    arrays, _ = golden
    inp = {k: v.double() if v.is_floating_point() else v for k, v in _inputs(arrays).items()}
    model = MatterGenDenoiser(base_model.config.model_copy(update={"max_neighbors": 10_000}))
    model.load_state_dict(base_model.state_dict())
    base_model = model.double().eval()
    with torch.no_grad():
        ref = base_model(**inp)
        rot = _rotation(3)
        out_r = base_model(**{**inp, "lattice": inp["lattice"] @ rot.T})
        shift = torch.tensor([0.31, -0.12, 0.57], dtype=torch.float64)
        shifted = base_model(**{**inp, "frac_coords": inp["frac_coords"] + shift})
        perm = torch.arange(len(inp["atom_types"]))
        perm[7:16] = perm[7:16].flip(0)  # the atoms of the last crystal, reversed
        out_p = base_model(**{**inp, "frac_coords": inp["frac_coords"][perm], "atom_types": inp["atom_types"][perm]})
    tol = {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(out_r.frac_score, ref.frac_score, **tol)
    torch.testing.assert_close(out_r.type_logits, ref.type_logits, **tol)
    torch.testing.assert_close(out_r.lattice_score, rot @ ref.lattice_score @ rot.T, **tol)
    torch.testing.assert_close(shifted.frac_score, ref.frac_score, **tol)
    torch.testing.assert_close(shifted.lattice_score, ref.lattice_score, **tol)
    torch.testing.assert_close(out_p.frac_score, ref.frac_score[perm], **tol)
    torch.testing.assert_close(out_p.type_logits, ref.type_logits[perm], **tol)
    torch.testing.assert_close(out_p.lattice_score, ref.lattice_score, **tol)


def test_lattice_score_is_symmetric(golden, base_model) -> None:
    arrays, _ = golden
    with torch.no_grad():
        out = base_model(**_inputs(arrays))
    torch.testing.assert_close(out.lattice_score, out.lattice_score.transpose(1, 2))


def test_element_mask() -> None:
    logits = torch.zeros(3, 101)
    batch = torch.tensor([0, 0, 1])
    masked = mask_disallowed_elements(logits, batch, ["Li-O", "Fe"], torch.tensor([False, True]))
    allowed0 = (masked[0] > -1).nonzero().flatten().add(1).tolist()
    assert allowed0 == [3, 8]  # Li, O (atomic numbers = index + 1)
    allowed2 = (masked[2] > -1).nonzero().flatten().add(1).tolist()
    assert 2 not in allowed2 and 43 not in allowed2 and 83 in allowed2 and 84 not in allowed2
    assert masked[:, MASK_TOKEN - 1].max() < -1e9  # the mask class is never predicted


def test_config_from_fixture_yaml_and_errors(tmp_path: Path) -> None:
    import yaml

    cfg = yaml.safe_load((GOLDEN / "adapter" / "config.yaml").read_text())
    dc = config_from_mattergen_yaml(cfg)
    assert sorted(dc.property_embeddings_adapt) == sorted(
        ["chemical_system", "dft_band_gap", "space_group", "ml_bulk_modulus"]
    )
    assert dc.property_embeddings_adapt["ml_bulk_modulus"].log10_transform
    assert dc.property_embeddings_adapt["space_group"].kind == "space_group"
    bad = json.loads(json.dumps(cfg))
    bad["lightning_module"]["diffusion_module"]["model"]["gemnet"]["otf_graph"] = False
    with pytest.raises(WeightsError, match="otf_graph"):
        config_from_mattergen_yaml(bad)
    # a checkpoint whose config does not fit its weights is refused
    shutil.copytree(GOLDEN / "base", tmp_path / "m")
    base_cfg = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    base_cfg["lightning_module"]["diffusion_module"]["model"]["gemnet"]["num_blocks"] = 3
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(base_cfg))
    with pytest.raises(WeightsError, match="does not fit"):
        load_mattergen_checkpoint(tmp_path / "m")
    with pytest.raises(WeightsError, match="does not exist"):
        load_mattergen_checkpoint(tmp_path / "nothing")


def test_released_architecture_defaults() -> None:
    """The defaults are the released models' architecture (mattergen_base config.yaml)."""
    c = DenoiserConfig()
    assert (c.num_blocks, c.emb_size_atom, c.emb_size_edge, c.cutoff, c.max_neighbors, c.hidden_dim) == (
        4,
        512,
        512,
        7.0,
        50,
        512,
    )
    small = DenoiserConfig(
        hidden_dim=8,
        latent_dim=16,
        atom_embedding_size=8,
        emb_size_atom=8,
        emb_size_edge=8,
        num_blocks=1,
        num_radial=8,
        property_embeddings={"space_group": PropertyEmbeddingConfig(kind="space_group", hidden_dim=8)},
    )
    model = MatterGenDenoiser(small)
    frac = torch.rand(3, 3)
    out = model(
        frac,
        4.0 * torch.eye(3)[None],
        torch.tensor([3, 8, MASK_TOKEN]),
        torch.tensor([3]),
        torch.zeros(3, dtype=torch.long),
        torch.tensor([0.5]),
        conditions={"space_group": torch.tensor([225])},
    )
    assert out.type_logits.shape == (3, 101) and math.isfinite(float(out.lattice_score.detach().sum()))


#: sha256 of the sorted ``key:shape`` lines of the reference model's state dict (and its parameter
#: count), measured by instantiating ``lightning_module.diffusion_module.model`` of each released
#: config.yaml with microsoft/mattergen 1.0.3 (hydra.utils.instantiate, no weights).
REFERENCE_LAYOUTS = {
    "chemical_system": ("132079c808e0ca029c60393790ad529845ef478cf25e2a1506e3025f92fada95", 48812667),
    "chemical_system_energy_above_hull": ("c00030436c4ca7870689a88126e7ac60a5cf902c7f17bf5ce12cb00b0ed82bb0", 53011067),
    "dft_band_gap": ("a028cb8b60016929d3c77fb6d2466f3eb05c63658c5b9049954b5114b2de0ff6", 48760443),
    "dft_mag_density": ("937468495b4f555496e04cbc8dd37b5e93439662bc02ba2e0be5e01fc28b9293", 48760443),
    "dft_mag_density_hhi_score": ("1840326783b7ffc1c34ac24cd4ea88af6c169f1070961ea2bb5e56a9811db507", 52958843),
    "mattergen_base": ("bc96d354b1fb9d8f177a401b74e2437b379b2fe8288e4c45555798cc2fa64638", 44562043),
    "ml_bulk_modulus": ("1ae84231a589ade8ea426c2a462df9f825bf2d89240d68f7c19e2951f51c46cb", 48760443),
    "mp_20_base": ("bc96d354b1fb9d8f177a401b74e2437b379b2fe8288e4c45555798cc2fa64638", 44562043),
    "space_group": ("24d2fa8d21e62a4dc99ec567e7219d261af15e595393c1511556ce740438f000", 48878203),
}


def test_released_configs_give_the_reference_layout() -> None:
    """Every released config.yaml (shipped copies) builds a denoiser whose state-dict keys and
    shapes are exactly the reference model's, so the released weights load strictly."""
    import hashlib
    from importlib import resources

    import yaml

    folder = resources.files("crystal_mattergen").joinpath("released_configs")
    for name, (digest, n_params) in REFERENCE_LAYOUTS.items():
        cfg = yaml.safe_load(folder.joinpath(f"{name}.yaml").read_text())
        with torch.device("meta"):
            model = MatterGenDenoiser(config_from_mattergen_yaml(cfg, name))
        lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(model.state_dict().items()))
        assert hashlib.sha256(lines.encode()).hexdigest() == digest, name
        assert sum(p.numel() for p in model.parameters()) == n_params, name
