"""DiffCSP crystal structure prediction on Perov-5 / Carbon-24 test sets (CDVAE/DiffCSP protocol).

For the first ``--limit`` structures of ``--data`` (the test CSV), DiffCSP predicts a structure
for the composition of each (the test cell's atoms, in its order), ``--k`` samples per test
structure, and ``crystal_metrics.csp_metrics`` reports match rate and RMSE with
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` (valid samples only, as the papers).
k = 1 uses every structure of the subset; k = 20 (``--k20-limit``) a smaller prefix of it.
Sampling time and throughput (structures/s) are measured around the batched sampler.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generators_diffcsp.py \\
        --data ../shared/data/perov_5/test.csv --limit 500 --k20-limit 20 --out runs/diffcsp/bench-perov5.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def _structures(batch: Any) -> list[Any]:
    return batch.to_structures()


def run_ab_initio(args: argparse.Namespace) -> dict[str, Any]:
    """Ab initio generation: ``--gen-samples`` crystals, generation metrics against the test subset."""
    from crystal.io import read_structures
    from crystal_diffcsp.generator import DiffCSPGenerator
    from crystal_metrics import generation_metrics

    torch.set_num_threads(args.threads)
    refs = read_structures(Path(args.data), limit=args.gen_reference).structures
    gen = DiffCSPGenerator(
        device=args.device,
        mode="ab_initio",
        checkpoint=args.gen_checkpoint,
        batch_size=args.batch_size,
        steps=args.steps,
        min_distance=0.0,
    )
    t0 = time.perf_counter()
    batch = gen.generate(args.gen_samples, seed=0)
    seconds = time.perf_counter() - t0
    metrics = generation_metrics(batch.to_structures(), refs, dataset=args.dataset, workers=args.workers)
    return {
        "checkpoint": args.gen_checkpoint,
        "num_generated": len(batch),
        "num_reference": len(refs),
        "sampling_seconds": round(seconds, 1),
        "structures_per_second": round(len(batch) / seconds, 3),
        "model": json.loads(gen.model.config.model_dump_json()),
        "weights_metadata": {k: v for k, v in gen.metadata.items() if k != "fit"},
        "metrics": metrics,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crystal.batch import CrystalBatch
    from crystal.io import read_structures
    from crystal_diffcsp.generator import DiffCSPGenerator
    from crystal_metrics import csp_metrics

    torch.set_num_threads(args.threads)
    res = read_structures(Path(args.data), limit=args.limit)
    refs = res.structures
    gen_kw: dict[str, Any] = {"batch_size": args.batch_size, "steps": args.steps}
    if args.checkpoint:
        gen_kw["checkpoint"] = args.checkpoint
    else:
        gen_kw["weights"] = args.weights
    if args.step_lr is not None:
        gen_kw["step_lr"] = args.step_lr
    gen = DiffCSPGenerator(device=args.device, **gen_kw)
    ref_batch = CrystalBatch.from_structures(refs)
    out: dict[str, Any] = {
        "data": args.data,
        "generator": gen_kw,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"device {gen.device}",
        "model": json.loads(gen.model.config.model_dump_json()),
        "weights_metadata": {k: v for k, v in gen.metadata.items() if k != "fit"},
    }

    def sample(batch: CrystalBatch, seed: int) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        pred = gen.generate_all(batch.atomic_numbers, batch.num_atoms, seed=seed)
        if gen.device.type == "cuda":
            torch.cuda.synchronize()
        return _structures(pred), time.perf_counter() - t0

    # k = 1 on the whole subset
    preds, seconds = sample(ref_batch, seed=0)
    m1 = csp_metrics([[p] for p in preds], refs, ks=(1,), workers=args.workers)
    out["k1"] = {
        "num_test": len(refs),
        "sampling_seconds": round(seconds, 1),
        "structures_per_second": round(len(refs) / seconds, 3),
        **m1["k"]["1"],
        "valid_fraction": m1["valid_fraction"],
        "errors": len(m1["errors"]),
    }
    print(json.dumps(out["k1"]), flush=True)
    # k = 20 on a prefix
    if args.k20_limit:
        n = min(args.k20_limit, len(refs))
        sub = ref_batch.select(torch.arange(n).repeat_interleave(args.k))
        preds, seconds = sample(sub, seed=1)
        groups = [preds[i * args.k : (i + 1) * args.k] for i in range(n)]
        mk = csp_metrics(groups, refs[:n], ks=(1, args.k), workers=args.workers)
        out[f"k{args.k}"] = {
            "num_test": n,
            "samples": n * args.k,
            "sampling_seconds": round(seconds, 1),
            "structures_per_second": round(n * args.k / seconds, 3),
            "by_k": mk["k"],
            "valid_fraction": mk["valid_fraction"],
            "errors": len(mk["errors"]),
        }
        print(json.dumps(out[f"k{args.k}"]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/perov_5/test.csv")
    p.add_argument("--limit", type=int, default=500, help="first N test structures (k = 1)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--k20-limit", type=int, default=0, help="first N test structures sampled k times (0: skip)")
    p.add_argument("--weights", default="diffcsp-perov5-csp")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: all T = 1000)")
    p.add_argument("--step-lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="processes for StructureMatcher")
    p.add_argument("--out", default=None)
    p.add_argument("--gen-checkpoint", default=None, help="ab initio model.pt: run the generation benchmark instead")
    p.add_argument("--gen-samples", type=int, default=100)
    p.add_argument("--gen-reference", type=int, default=500, help="first N test structures as the reference set")
    p.add_argument("--dataset", default="perov_5", help="CDVAE coverage cut-offs (perov_5, carbon_24, mp_20)")
    a = p.parse_args()
    result = run_ab_initio(a) if a.gen_checkpoint else run(a)
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
