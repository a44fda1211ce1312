"""Make the MatterGen golden fixture with the REFERENCE implementation (microsoft/mattergen).

Writes, next to this file:

* ``base/config.yaml`` + ``base/checkpoints/last.ckpt``: a small random-weight
  ``GemNetTDenoiser`` (the layout of ``checkpoints/mattergen_base``, reduced widths);
* ``adapter/config.yaml`` + ``adapter/checkpoints/last.ckpt``: a small random-weight
  ``GemNetTAdapter`` / ``GemNetTCtrl`` with four adapter conditions (chemical_system,
  dft_band_gap, space_group, ml_bulk_modulus with log10 scaling) — the layout of the released
  fine-tuned models;
* ``golden.npz`` (inputs and the reference denoiser's outputs) and ``golden.json`` (cases,
  string conditions, versions).

Both checkpoints are in the released format: Hydra ``config.yaml`` (the released one with the
model node shrunk) and a PyTorch-Lightning checkpoint written by ``Trainer.save_checkpoint``
plus the ``config`` entry that mattergen's ``AddConfigCallback`` adds.

How to run (CPU; ~1 min once the venv exists; what produced the committed files, 2026-12-03)::

    python3.11 -m venv /tmp/mattergen-ref
    /tmp/mattergen-ref/bin/pip install torch==2.13.0 "numpy<2" "setuptools<70" wheel ninja
    /tmp/mattergen-ref/bin/pip install --no-build-isolation torch-scatter   # 2.1.2, ~40 min here
    # optional (hours on 2 cores; refshim/torch_sparse is used when absent):
    # /tmp/mattergen-ref/bin/pip install --no-build-isolation torch-sparse
    /tmp/mattergen-ref/bin/pip install pymatgen ase emmet-core hydra-core==1.3.1 omegaconf==2.3.0 \
        pytorch-lightning==2.0.6 torch_geometric sympy scipy pandas
    /tmp/mattergen-ref/bin/pip install --no-deps mattergen==1.0.3
    # the wheel lacks the GemNet scale file; take it from github.com/microsoft/mattergen:
    cp mattergen/common/gemnet/gemnet-dT.json \
        /tmp/mattergen-ref/lib/python3.11/site-packages/mattergen/common/gemnet/
    /tmp/mattergen-ref/bin/python plugins/mattergen/tests/golden/make_golden.py

Deterministic (seeded); float32. Where the compiled ``torch_scatter`` / ``torch_sparse`` are not
installed (building them from source takes hours on a 2-core VM), the pure-torch stand-ins in
``refshim/`` are used for those few functions (sum scatter/segment reductions and
``SparseTensor`` row selection); ``golden.json`` records which (``"shimmed"``). Everything else
is the reference's own code.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 1234

SMALL = {
    "cutoff": 7.0,
    "emb_size_atom": 24,
    "emb_size_edge": 24,
    "emb_size_trip": 8,
    "emb_size_rbf": 8,
    "emb_size_cbf": 8,
    "emb_size_bil_trip": 8,
    "num_radial": 16,
    "latent_dim": 24,
    "max_cell_images_per_dim": 5,
    "max_neighbors": 50,
    "num_blocks": 2,
    "num_targets": 1,
    "otf_graph": True,
    "regress_stress": True,
    "scale_file": "mattergen/common/gemnet/gemnet-dT.json",
}
HIDDEN = 24


def corruption() -> dict:
    """The corruption node of the released configs (verbatim values)."""
    return {
        "_target_": "mattergen.diffusion.corruption.multi_corruption.MultiCorruption",
        "discrete_corruptions": {
            "atomic_numbers": {
                "_target_": "mattergen.diffusion.corruption.d3pm_corruption.D3PMCorruption",
                "d3pm": {
                    "_target_": "mattergen.diffusion.d3pm.d3pm.MaskDiffusion",
                    "dim": 101,
                    "schedule": {
                        "_target_": "mattergen.diffusion.d3pm.d3pm.create_discrete_diffusion_schedule",
                        "kind": "standard",
                        "num_steps": 1000,
                    },
                },
                "offset": 1,
            }
        },
        "sdes": {
            "cell": {
                "_target_": "mattergen.common.diffusion.corruption.LatticeVPSDE.from_vpsde_config",
                "vpsde_config": {
                    "beta_max": 20,
                    "beta_min": 0.1,
                    "limit_density": 0.05771451654022283,
                    "limit_var_scaling_constant": 0.25,
                },
            },
            "pos": {
                "_target_": "mattergen.common.diffusion.corruption.NumAtomsVarianceAdjustedWrappedVESDE",
                "limit_info_key": "num_atoms",
                "sigma_max": 5.0,
                "wrapping_boundary": 1.0,
            },
        },
    }


def property_node(name: str, kind: str, log10: bool = False) -> dict:
    if kind == "scalar":
        cond = {"_target_": "mattergen.diffusion.model_utils.NoiseLevelEncoding", "d_model": HIDDEN}
        scaler = {"_target_": "mattergen.common.utils.data_utils.StandardScalerTorch"}
        if log10:
            scaler["log10_transform"] = True
    elif kind == "space_group":
        cond = {"_target_": "mattergen.property_embeddings.SpaceGroupEmbeddingVector", "hidden_dim": HIDDEN}
        scaler = {"_target_": "torch.nn.Identity"}
    else:
        cond = {"_target_": "mattergen.property_embeddings.ChemicalSystemMultiHotEmbedding", "hidden_dim": HIDDEN}
        scaler = {"_target_": "torch.nn.Identity"}
    return {
        "_target_": "mattergen.property_embeddings.PropertyEmbedding",
        "conditional_embedding_module": cond,
        "name": name,
        "scaler": scaler,
        "unconditional_embedding_module": {
            "_target_": "mattergen.property_embeddings.EmbeddingVector",
            "hidden_dim": HIDDEN,
        },
    }


ADAPT = {
    "chemical_system": ("chemical_system", False),
    "dft_band_gap": ("scalar", False),
    "space_group": ("space_group", False),
    "ml_bulk_modulus": ("scalar", True),
}


def full_config(adapter: bool) -> dict:
    gemnet = {
        "_target_": "mattergen.common.gemnet.gemnet.GemNetT",
        "atom_embedding": {
            "_target_": "mattergen.common.gemnet.layers.embedding_block.AtomEmbedding",
            "emb_size": HIDDEN,
            "with_mask_type": True,
        },
        **SMALL,
    }
    model = {
        "_target_": "mattergen.denoiser.GemNetTDenoiser",
        "atom_type_diffusion": "mask",
        "denoise_atom_types": True,
        "gemnet": gemnet,
        "hidden_dim": HIDDEN,
        "property_embeddings": {},
        "property_embeddings_adapt": {},
    }
    if adapter:
        model["_target_"] = "mattergen.adapter.GemNetTAdapter"
        gemnet["_target_"] = "mattergen.common.gemnet.gemnet_ctrl.GemNetTCtrl"
        gemnet["condition_on_adapt"] = list(ADAPT)
        model["property_embeddings_adapt"] = {k: property_node(k, kind, log10) for k, (kind, log10) in ADAPT.items()}
    return {
        "lightning_module": {
            "_target_": "mattergen.diffusion.lightning_module.DiffusionLightningModule",
            "diffusion_module": {
                "_target_": "mattergen.diffusion.diffusion_module.DiffusionModule",
                "corruption": corruption(),
                "loss_fn": {
                    "_target_": "mattergen.common.loss.MaterialsLoss",
                    "d3pm_hybrid_lambda": 0.01,
                    "include_atomic_numbers": True,
                    "include_cell": True,
                    "include_pos": True,
                    "reduce": "sum",
                    "weights": {"atomic_numbers": 1.0, "cell": 1.0, "pos": 0.1},
                },
                "model": model,
                "pre_corruption_fn": {
                    "_target_": "mattergen.property_embeddings.SetEmbeddingType",
                    "dropout_fields_iid": False,
                    "p_unconditional": 0.2,
                },
            },
            "optimizer_partial": {"_partial_": True, "_target_": "torch.optim.Adam", "lr": 0.0001},
        },
    }


def make_inputs() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(SEED)
    num_atoms = torch.tensor([2, 5, 9])
    scale = torch.tensor([6.2, 4.4, 5.3])
    lattices = []
    for a in scale:
        noise = 0.35 * torch.randn(3, 3, generator=g)
        lattices.append(a * torch.eye(3) + 0.5 * (noise + noise.T))
    lattice = torch.stack(lattices)
    frac = torch.rand(int(num_atoms.sum()), 3, generator=g)
    frac[3] += 1.0  # fractional coordinates outside [0, 1) are allowed
    types = torch.randint(1, 84, (int(num_atoms.sum()),), generator=g)
    types[[1, 4, 9, 12]] = 101  # masked atoms
    t = torch.tensor([0.93, 0.47, 0.12])
    return {
        "frac_coords": frac.numpy(),
        "lattice": lattice.numpy(),
        "atom_types": types.numpy(),
        "num_atoms": num_atoms.numpy(),
        "t": t.numpy(),
        "dft_band_gap": np.array([1.3, 0.2, 4.0], dtype=np.float32),
        "space_group": np.array([225, 14, 191], dtype=np.int64),
        "ml_bulk_modulus": np.array([120.0, 35.0, 260.0], dtype=np.float32),
        # per-crystal "use the unconditional embedding" flags of the conditional case
        "uncond_chemical_system": np.array([False, True, False]),
        "uncond_dft_band_gap": np.array([False, False, True]),
        "uncond_space_group": np.array([True, False, False]),
        "uncond_ml_bulk_modulus": np.array([False, False, False]),
    }


CHEMICAL_SYSTEMS = ["Li-O", "Fe-Ni-O-P", "Na-Cl-K"]


def chemgraph_batch(inp: dict[str, np.ndarray], conditional: bool):
    from mattergen.common.data.chemgraph import ChemGraph
    from mattergen.common.data.collate import collate
    from mattergen.property_embeddings import replace_use_unconditional_embedding

    graphs = []
    start = 0
    for b, n in enumerate(inp["num_atoms"].tolist()):
        graphs.append(
            ChemGraph(
                pos=torch.from_numpy(inp["frac_coords"][start : start + n]),
                cell=torch.from_numpy(inp["lattice"][b : b + 1]),
                atomic_numbers=torch.from_numpy(inp["atom_types"][start : start + n]),
                num_atoms=torch.tensor([n]),
            )
        )
        start += n
    batch = collate(graphs)
    if conditional:
        batch = batch.replace(
            chemical_system=list(CHEMICAL_SYSTEMS),
            dft_band_gap=torch.from_numpy(inp["dft_band_gap"]).reshape(-1, 1),
            space_group=torch.from_numpy(inp["space_group"]).reshape(-1, 1),
            ml_bulk_modulus=torch.from_numpy(inp["ml_bulk_modulus"]).reshape(-1, 1),
        )
        batch = replace_use_unconditional_embedding(
            batch, {k: torch.from_numpy(inp[f"uncond_{k}"]).reshape(-1, 1) for k in ADAPT}
        )
    return batch


def randomise(lm: torch.nn.Module) -> None:
    """Make every weight matter: zero-initialised adapter mixins get random values, scalers
    and scale factors non-trivial values."""
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "cond_mixin_layers" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            if name.endswith("scale_factor"):
                p.mul_(0.5 + torch.rand((), generator=g))
        for name, buf in lm.named_buffers():
            if name.endswith("scaler.means"):
                buf.copy_(torch.tensor([1.5 if "band_gap" in name else 2.0]))
            elif name.endswith("scaler.stds"):
                buf.copy_(torch.tensor([0.8 if "band_gap" in name else 0.4]))


def save_lightning(lm, config: dict, path: Path) -> None:
    import pytorch_lightning as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=1
        )
        trainer.strategy.connect(lm)
        trainer.save_checkpoint(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        how = "pl.Trainer.save_checkpoint"
    except Exception as exc:  # pragma: no cover - fallback keeps the fixture reproducible
        print("Trainer.save_checkpoint failed, writing the Lightning layout by hand:", exc)
        ckpt = {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": lm.state_dict(),
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
        }
        how = "hand-made Lightning layout"
    ckpt["config"] = copy.deepcopy(config)  # mattergen's AddConfigCallback
    torch.save(ckpt, path)
    print(f"wrote {path} ({path.stat().st_size} bytes) via {how}; keys {sorted(ckpt)}")


def run_case(model, inp, conditional: bool, masked: bool) -> dict[str, np.ndarray]:
    from mattergen.denoiser import mask_disallowed_elements

    model.eval()
    model.element_mask_func = mask_disallowed_elements if masked else None
    batch = chemgraph_batch(inp, conditional)
    with torch.no_grad():
        out = model(batch, torch.from_numpy(inp["t"]))
    return {
        "pos": out["pos"].numpy(),
        "cell": out["cell"].numpy(),
        "atomic_numbers": out["atomic_numbers"].numpy(),
    }


def _use_shims_if_needed() -> list[str]:
    """Put ``refshim/`` at the END of ``sys.path`` (installed packages win) for whichever of
    torch_scatter / torch_sparse is not installed."""
    import importlib.util
    import sys

    missing = [m for m in ("torch_scatter", "torch_sparse") if importlib.util.find_spec(m) is None]
    if missing:
        sys.path.append(str(HERE / "refshim"))
    return missing


def main() -> None:
    import importlib.metadata

    shimmed = _use_shims_if_needed()
    import pytorch_lightning as pl
    import torch_geometric
    import torch_scatter
    import torch_sparse
    import yaml
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(SEED)
    inp = make_inputs()
    arrays: dict[str, np.ndarray] = {f"in_{k}": v for k, v in inp.items()}
    cases = {}
    for name, adapter in (("base", False), ("adapter", True)):
        config = full_config(adapter)
        out_dir = HERE / name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
        torch.manual_seed(SEED + (7 if adapter else 0))
        lm = instantiate(OmegaConf.create(config).lightning_module)
        randomise(lm)
        save_lightning(lm, config, out_dir / "checkpoints" / "last.ckpt")
        model = lm.diffusion_module.model
        n_params = sum(p.numel() for p in model.parameters())
        variants = [("uncond", False, False), ("uncond_masked", False, True)]
        if adapter:
            variants += [("cond", True, False), ("cond_masked", True, True)]
        for vname, conditional, masked in variants:
            res = run_case(model, inp, conditional, masked)
            for k, v in res.items():
                arrays[f"{name}_{vname}_{k}"] = v
            cases[f"{name}_{vname}"] = {"conditional": conditional, "masked": masked}
        cases[f"{name}_n_params"] = n_params
    np.savez_compressed(HERE / "golden.npz", **arrays)
    meta = {
        "cases": cases,
        "chemical_system": CHEMICAL_SYSTEMS,
        "adapter_properties": list(ADAPT),
        "versions": {
            "mattergen": importlib.metadata.version("mattergen"),
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "torch_scatter": torch_scatter.__version__,
            "torch_sparse": torch_sparse.__version__,
            "torch_geometric": torch_geometric.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "shimmed": shimmed,
    }
    (HERE / "golden.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
