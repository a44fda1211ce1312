"""Make the reverse-step fixture of crystal-mattergen with the REFERENCE implementation.

Runs one predictor-corrector time point of MatterGen's own sampler
(``mattergen.diffusion.sampling.classifier_free_guidance.GuidedPredictorCorrector`` with the
predictors/correctors, SDEs and D3PM of the released ``sampling_conf/default.yaml`` and
``corruption/default.yaml``) on fixed noisy crystals, and writes the inputs, every random draw
it made and its outputs to ``golden_steps.npz`` beside this script. The crystal test
(``tests/test_golden_steps.py``) replays the same draws through
``crystal_mattergen.diffusion.PredictorCorrector`` + ``crystal_mattergen.sampler.GuidedScore``.

The denoiser is a fixed analytic stand-in (``stub_outputs`` below, with seeded constants,
which the crystal test imports from this file): the fixture proves the *diffusion* half (SDE coefficients,
Langevin step sizes, polar decomposition, D3PM posterior, classifier-free guidance mixing),
independent of GemNet, whose parity has its own fixture (``tests/golden``). The stand-in uses the
conditional band-gap value only when the batch asks for the conditional embedding, so the
guided mix is exercised with ``guidance_scale`` 2 (both branches) and 0 (unconditional only).

How the noise is shared: during the step, ``torch.randn_like`` is wrapped to record each
normal draw (corrector pos, corrector cell, predictor pos, predictor cell — the reference draws
the predictor's lattice noise shaped like its (B, 1, 1) coefficient), and
``torch.distributions.Categorical.sample`` is replaced by the Gumbel-max trick
``argmax(logits + g)`` with ``g`` drawn from seeded uniforms and recorded (an exact categorical
sampler; the reference's D3PM predictor draws twice, the first draw is discarded by the
reference when ``predict_x0`` is set, the second is the one replayed).

A second set of cases (``loss*`` keys) records the reference's forward corruption
(``MultiCorruption.sample_marginal``) and its ``MaterialsLoss`` on clean crystals, replayed by
the test through :class:`crystal_mattergen.diffusion.Corruption`.

Run once (2026-12, the side venv built by the model helper, /tmp/mattergen-ref):

    python3.11 -m venv /tmp/mattergen-ref
    /tmp/mattergen-ref/bin/pip install torch==2.13.0          # CPU wheel
    /tmp/mattergen-ref/bin/pip install --no-deps mattergen==1.0.3
    /tmp/mattergen-ref/bin/pip install pymatgen hydra-core==1.3.1 omegaconf==2.3.0 \\
        pytorch-lightning==2.0.6 torch_geometric ; torch-scatter, torch-sparse built from source
    /tmp/mattergen-ref/bin/python plugins/mattergen/tests/golden_steps/make_golden_steps.py

If the compiled ``torch_scatter`` is not importable, a pure-torch stand-in of the few functions
this path needs is registered first (see ``_torch_scatter_stand_in``; recorded in the json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CASES = [  # (time index i of N = 1000, guidance scale)
    (0, 2.0),
    (400, 2.0),
    (400, 0.0),
    (998, 2.0),
    (999, 2.0),
]
NUM_ATOMS = [2, 4, 5]
BAND_GAPS = [0.5, 1.0, 2.0]


def constants() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "A": torch.randn(3, 4, generator=g),
        "Bmat": torch.randn(4, 101, generator=g),
        "v": torch.randn(3, generator=g),
        "W": torch.randn(3, 3, generator=g) * 0.1,
    }


def stub_outputs(
    pos: torch.Tensor,
    cell: torch.Tensor,
    types: torch.Tensor,
    num_atoms: torch.Tensor,
    batch: torch.Tensor,
    t: torch.Tensor,
    gap: torch.Tensor | None,
    k: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stand-in denoiser: raw (pos, cell, logits); ``gap`` (B,) or None (unconditional)."""
    two_pi = 2 * math.pi
    feat = torch.sin(two_pi * pos @ k["A"])  # (N, 4)
    n3 = num_atoms.to(pos.dtype) ** (1 / 3)
    shift = torch.zeros(len(num_atoms), 3, dtype=pos.dtype) if gap is None else gap[:, None] * k["v"][None]
    out_pos = 0.3 * torch.sin(two_pi * pos) + 0.2 * torch.cos(two_pi * pos) * t[batch, None] + 0.1 * shift[batch]
    sym = 0.5 * (cell + cell.transpose(1, 2))
    out_cell = -0.2 * (sym / n3[:, None, None] - 2.0 * torch.eye(3, dtype=pos.dtype)) + k["W"][None] * t[:, None, None]
    if gap is not None:
        out_cell = out_cell + 0.05 * gap[:, None, None] * torch.eye(3, dtype=pos.dtype)
    logits = 3.0 * feat @ k["Bmat"] + 0.5 * torch.nn.functional.one_hot(types - 1, 101).to(pos.dtype)
    if gap is not None:
        logits = logits + gap[batch, None] * 0.5 * k["Bmat"][0][None]
    logits[:, 100] = logits[:, 100] - 1e10  # the released denoiser masks the mask class at sampling
    return out_pos, out_cell, logits


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    n = torch.tensor(NUM_ATOMS)
    nat = int(n.sum())
    pos = torch.rand(nat, 3, generator=g)
    base = (n.double() / 0.05771451654022283) ** (1 / 3)
    m = torch.randn(len(n), 3, 3, generator=g, dtype=torch.float64) * 0.4
    cell = (base[:, None, None] * torch.eye(3, dtype=torch.float64) + 0.5 * (m + m.transpose(1, 2))).float()
    types = torch.randint(1, 95, (nat,), generator=g)
    masked = torch.rand(nat, generator=g) < 0.5
    types[masked] = 101
    return {"pos": pos, "cell": cell, "atomic_numbers": types, "num_atoms": n}


def _torch_scatter_stand_in() -> str:
    """Import ``torch_scatter``; when its compiled build is missing, register a pure-torch
    stand-in (``scatter``/``scatter_add``/``scatter_sum``/``scatter_mean`` through
    ``Tensor.scatter_reduce``) — on this path only the Langevin corrector's per-crystal norm sum
    uses it. Returns what was used (recorded in golden_steps.json)."""
    import sys
    import types

    try:
        import torch_scatter

        return f"torch_scatter {torch_scatter.__version__}"
    except ImportError:
        pass

    def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):  # type: ignore[no-untyped-def]
        dim = dim if dim >= 0 else src.dim() + dim
        size = list(src.shape)
        size[dim] = (int(index.max()) + 1 if index.numel() else 0) if dim_size is None else dim_size
        if index.dim() < src.dim():
            shape = [1] * src.dim()
            shape[dim] = -1
            index = index.reshape(shape).expand_as(src)
        red = {"sum": "sum", "add": "sum", "mean": "mean", "max": "amax", "min": "amin"}[reduce]
        res = torch.zeros(size, dtype=src.dtype, device=src.device)
        return res.scatter_reduce(dim, index, src, reduce=red, include_self=False)

    def unavailable(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError("not part of the torch_scatter stand-in")

    mod = types.ModuleType("torch_scatter")
    mod.scatter = scatter  # type: ignore[attr-defined]
    mod.scatter_add = mod.scatter_sum = lambda src, index, dim=-1, out=None, dim_size=None: scatter(  # type: ignore[attr-defined]
        src, index, dim, out, dim_size, "sum"
    )
    mod.scatter_mean = lambda src, index, dim=-1, out=None, dim_size=None: scatter(  # type: ignore[attr-defined]
        src, index, dim, out, dim_size, "mean"
    )
    mod.segment_coo = mod.segment_csr = unavailable  # type: ignore[attr-defined]
    sys.modules["torch_scatter"] = mod
    return "pure-torch stand-in (torch_scatter build unavailable)"


def main() -> None:  # pragma: no cover - runs in the reference venv only
    scatter_impl = _torch_scatter_stand_in()
    from mattergen.common.data.chemgraph import ChemGraph
    from mattergen.common.data.collate import collate
    from mattergen.common.diffusion.corruption import LatticeVPSDE, NumAtomsVarianceAdjustedWrappedVESDE
    from mattergen.common.diffusion.predictors_correctors import (
        LatticeAncestralSamplingPredictor,
        LatticeLangevinDiffCorrector,
    )
    from mattergen.common.loss import MaterialsLoss
    from mattergen.diffusion.corruption.d3pm_corruption import D3PMCorruption
    from mattergen.diffusion.corruption.multi_corruption import MultiCorruption, apply
    from mattergen.diffusion.d3pm.d3pm import MaskDiffusion, create_discrete_diffusion_schedule
    from mattergen.diffusion.d3pm.d3pm_predictors_correctors import D3PMAncestralSamplingPredictor
    from mattergen.diffusion.diffusion_module import DiffusionModule
    from mattergen.diffusion.sampling.classifier_free_guidance import GuidedPredictorCorrector
    from mattergen.diffusion.sampling.pc_sampler import _mask_replace
    from mattergen.diffusion.score_models.base import ScoreModel
    from mattergen.diffusion.wrapped.wrapped_predictors_correctors import (
        WrappedAncestralSamplingPredictor,
        WrappedLangevinCorrector,
    )
    from mattergen.property_embeddings import (
        SetConditionalEmbeddingType,
        SetUnconditionalEmbeddingType,
        get_use_unconditional_embedding,
    )

    torch.set_num_threads(1)
    k = constants()

    class Stub(ScoreModel):
        def forward(self, x, t):  # type: ignore[no-untyped-def]
            batch = x.get_batch_idx("pos")
            uncond = get_use_unconditional_embedding(x, "dft_band_gap").reshape(-1)
            gap = x["dft_band_gap"].reshape(-1).float()
            p_u, c_u, l_u = stub_outputs(x["pos"], x["cell"], x["atomic_numbers"], x["num_atoms"], batch, t, None, k)
            p_c, c_c, l_c = stub_outputs(x["pos"], x["cell"], x["atomic_numbers"], x["num_atoms"], batch, t, gap, k)
            ua = uncond[batch][:, None]
            return x.replace(
                pos=torch.where(ua, p_u, p_c),
                cell=torch.where(uncond[:, None, None], c_u, c_c),
                atomic_numbers=torch.where(ua, l_u, l_c),
            )

    corruption = MultiCorruption(
        sdes={
            "pos": NumAtomsVarianceAdjustedWrappedVESDE(
                wrapping_boundary=1.0, sigma_max=5.0, limit_info_key="num_atoms"
            ),
            "cell": LatticeVPSDE.from_vpsde_config(
                {
                    "beta_min": 0.1,
                    "beta_max": 20,
                    "limit_density": 0.05771451654022283,
                    "limit_var_scaling_constant": 0.25,
                }
            ),
        },
        discrete_corruptions={
            "atomic_numbers": D3PMCorruption(
                offset=1,
                d3pm=MaskDiffusion(
                    dim=101, schedule=create_discrete_diffusion_schedule(kind="standard", num_steps=1000)
                ),
            )
        },
    )
    module = DiffusionModule(
        model=Stub(),
        corruption=corruption,
        loss_fn=MaterialsLoss(
            reduce="sum", d3pm_hybrid_lambda=0.01, weights={"cell": 1.0, "pos": 0.1, "atomic_numbers": 1.0}
        ),
    )
    x = inputs()
    ptr = np.cumsum([0, *NUM_ATOMS])
    graphs = [
        ChemGraph(
            pos=x["pos"][ptr[b] : ptr[b + 1]],
            cell=x["cell"][b : b + 1],
            atomic_numbers=x["atomic_numbers"][ptr[b] : ptr[b + 1]],
            num_atoms=x["num_atoms"][b : b + 1],
            dft_band_gap=torch.tensor([BAND_GAPS[b]], dtype=torch.float64),
        )
        for b in range(len(NUM_ATOMS))
    ]
    start = collate(graphs)

    out: dict[str, np.ndarray] = {f"const_{key}": v.numpy() for key, v in k.items()}
    out.update({f"in_{key}": v.numpy() for key, v in x.items()})
    out["in_band_gap"] = np.asarray(BAND_GAPS, dtype=np.float32)
    meta = {"cases": [], "N": 1000, "mattergen": "1.0.3", "torch": torch.__version__, "torch_scatter": scatter_impl}
    real_randn_like = torch.randn_like
    real_sample = torch.distributions.Categorical.sample
    for case, (i, scale) in enumerate(CASES):
        sampler = GuidedPredictorCorrector(
            guidance_scale=scale,
            remove_conditioning_fn=SetUnconditionalEmbeddingType(),
            keep_conditioning_fn=SetConditionalEmbeddingType(),
            diffusion_module=module,
            predictor_partials={
                "pos": WrappedAncestralSamplingPredictor,
                "cell": LatticeAncestralSamplingPredictor,
                "atomic_numbers": lambda **kw: D3PMAncestralSamplingPredictor(predict_x0=True, **kw),
            },
            corrector_partials={
                "pos": lambda **kw: WrappedLangevinCorrector(max_step_size=1e6, snr=0.4, **kw),
                "cell": lambda **kw: LatticeLangevinDiffCorrector(max_step_size=1e6, snr=0.2, **kw),
            },
            device=torch.device("cpu"),
            n_steps_corrector=1,
            N=1000,
            eps_t=1 / 1000,
        )
        gen = torch.Generator().manual_seed(1000 + case)
        normals: list[torch.Tensor] = []
        gumbels: list[torch.Tensor] = []

        def randn_like(a, *args, **kwargs):  # type: ignore[no-untyped-def]
            z = torch.randn(a.shape, generator=gen, dtype=a.dtype)  # noqa: B023
            normals.append(z.clone())  # noqa: B023
            return z

        def categorical_sample(self, sample_shape=None):  # type: ignore[no-untyped-def]
            u = torch.rand(self.logits.shape, generator=gen, dtype=self.logits.dtype)  # noqa: B023
            gmb = -torch.log(-torch.log(u))
            gumbels.append(gmb.clone())  # noqa: B023
            return torch.argmax(self.logits + gmb, dim=-1)

        torch.randn_like = randn_like
        torch.distributions.Categorical.sample = categorical_sample
        try:
            timesteps = torch.linspace(sampler._max_t, sampler._eps_t, sampler.N)
            dt = -torch.tensor((sampler._max_t - sampler._eps_t) / (sampler.N - 1))
            batch = start.clone()
            mean_batch = batch.clone()
            mask = {key: None for key in ("pos", "cell", "atomic_numbers")}
            t = torch.full((batch.get_batch_size(),), timesteps[i])
            idx = sampler._multi_corruption._get_batch_indices(batch)
            score = sampler._score_fn(batch, t)
            sm = apply(
                fns={key: c.step_given_score for key, c in sampler._correctors.items()},
                broadcast={"t": t, "dt": dt},
                x=batch,
                score=score,
                batch_idx=idx,
            )
            batch, mean_batch = _mask_replace(samples_means=sm, batch=batch, mean_batch=mean_batch, mask=mask)
            after_corrector = {key: batch[key].clone() for key in ("pos", "cell")}
            score = sampler._score_fn(batch, t)
            sm = apply(
                fns={key: p.update_given_score for key, p in sampler._predictors.items()},
                x=batch,
                score=score,
                broadcast={"t": t, "batch": batch, "dt": dt},
                batch_idx=sampler._multi_corruption._get_batch_indices(batch),
            )
            batch, mean_batch = _mask_replace(samples_means=sm, batch=batch, mean_batch=mean_batch, mask=mask)
        finally:
            torch.randn_like = real_randn_like
            torch.distributions.Categorical.sample = real_sample
        shapes = [tuple(z.shape) for z in normals]
        nat, nb = int(sum(NUM_ATOMS)), len(NUM_ATOMS)
        assert shapes == [(nat, 3), (nb, 3, 3), (nat, 3), (nb, 1, 1)], shapes
        assert len(gumbels) == 2, len(gumbels)
        p = f"c{case}_"
        out[p + "t"] = t.numpy()
        out[p + "dt"] = dt.numpy()
        for name, z in zip(
            ("corrector_pos", "corrector_cell", "predictor_pos", "predictor_cell"), normals, strict=True
        ):
            out[p + "noise_" + name] = z.numpy()
        out[p + "noise_predictor_atomic_numbers"] = gumbels[1].numpy()
        for key, v in after_corrector.items():
            out[p + "corrected_" + key] = v.numpy()
        for key in ("pos", "cell", "atomic_numbers"):
            out[p + "sample_" + key] = batch[key].numpy()
            out[p + "mean_" + key] = mean_batch[key].numpy()
        meta["cases"].append({"i": i, "guidance_scale": scale, "t": float(t[0])})
    _training_loss_cases(module, graphs, k, out, meta)
    np.savez_compressed(HERE / "golden_steps.npz", **out)
    (HERE / "golden_steps.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("wrote", HERE / "golden_steps.npz", {c["i"]: c["guidance_scale"] for c in meta["cases"]})


LOSS_TIMES = [0.003, 0.2, 0.55, 0.97]


def _training_loss_cases(module, graphs, k, out, meta) -> None:  # type: ignore[no-untyped-def]  # pragma: no cover
    """Forward corruption + ``MaterialsLoss`` of the reference on clean crystals (masked input
    types replaced by oxygen), with the stand-in outputs on the noisy batch; draws recorded."""
    from mattergen.common.data.collate import collate

    clean = []
    for gr in graphs:
        z = gr["atomic_numbers"].clone()
        z[z == 101] = 8
        clean.append(gr.replace(atomic_numbers=z))
    batch = collate(clean)
    real_randn_like = torch.randn_like
    real_sample = torch.distributions.Categorical.sample
    for case, tval in enumerate(LOSS_TIMES):
        gen = torch.Generator().manual_seed(2000 + case)
        normals: list[torch.Tensor] = []
        gumbels: list[torch.Tensor] = []

        def randn_like(a, *args, **kwargs):  # type: ignore[no-untyped-def]
            z = torch.randn(a.shape, generator=gen, dtype=a.dtype)  # noqa: B023
            normals.append(z.clone())  # noqa: B023
            return z

        def categorical_sample(self, sample_shape=None):  # type: ignore[no-untyped-def]
            u = torch.rand(self.logits.shape, generator=gen, dtype=self.logits.dtype)  # noqa: B023
            gmb = -torch.log(-torch.log(u))
            gumbels.append(gmb.clone())  # noqa: B023
            return torch.argmax(self.logits + gmb, dim=-1)

        t = torch.full((batch.get_batch_size(),), tval) + torch.tensor([0.0, 0.01, 0.02])
        torch.randn_like = randn_like
        torch.distributions.Categorical.sample = categorical_sample
        try:
            noisy = module.corruption.sample_marginal(batch, t)
        finally:
            torch.randn_like = real_randn_like
            torch.distributions.Categorical.sample = real_sample
        by_shape = {tuple(z.shape): z for z in normals}  # the reference corrupts cell before pos
        assert len(normals) == 2 and set(by_shape) == {tuple(batch["pos"].shape), tuple(batch["cell"].shape)}
        p_out, c_out, l_out = stub_outputs(
            noisy["pos"],
            noisy["cell"],
            noisy["atomic_numbers"],
            noisy["num_atoms"],
            noisy.get_batch_idx("pos"),
            t,
            None,
            k,
        )
        l_out[:, 100] = l_out[:, 100] + 1e10  # training: no element masking
        model_out = noisy.replace(pos=p_out, cell=c_out, atomic_numbers=l_out)
        loss, metrics = module.loss_fn(
            multi_corruption=module.corruption, batch=batch, noisy_batch=noisy, score_model_output=model_out, t=t
        )
        q = f"loss{case}_"
        out[q + "t"] = t.numpy()
        out[q + "noise_pos"] = by_shape[tuple(batch["pos"].shape)].numpy()
        out[q + "noise_cell"] = by_shape[tuple(batch["cell"].shape)].numpy()
        out[q + "noise_atomic_numbers"] = gumbels[-1].numpy()
        for key in ("pos", "cell", "atomic_numbers"):
            out[q + "noisy_" + key] = noisy[key].numpy()
        out[q + "loss"] = np.asarray(float(loss))
        for key, v in metrics.items():
            out[q + "metric_" + key] = np.asarray(float(v))
        meta.setdefault("loss_cases", []).append({"t": [float(x) for x in t], "metrics": sorted(metrics)})


if __name__ == "__main__":
    main()
