"""CrystaLLM on the Perov-5 (or Carbon-24) test set: CSP match rate, valid CIFs, sampling speed.

Protocol (CrystaLLM's ``BENCHMARKING.md`` with our generator):

1. a seeded subset of ``--n`` test structures (``test.csv``); each is canonicalised and the
   prompt is its cell formula (``data_<formula>``; with ``--with-space-group`` also the atom
   properties and the test structure's space group);
2. one sample per prompt (k = 1; ``--k20 M`` adds 20 samples for the first M prompts), sampled
   by the shipped weights with the generator's defaults (temperature 1, top-k 10), batched,
   KV-cached;
3. every text is checked (parses, formula, bond lengths, space group): the valid fraction and
   the failures per check are reported; so is the same fraction for the *real* canonical CIFs
   of the subset (the ceiling of the bond-length check, which rejects part of the real data);
4. CSP metrics with :func:`crystal_metrics.csp_metrics` (``StructureMatcher(stol=0.5,
   angle_tol=10, ltol=0.3)``, SMACT + distance validity as CDVAE/DiffCSP): over every sample
   that parses (the reference benchmark's protocol) and over the samples passing all checks
   (what ``generate`` returns);
5. sampling throughput with and without the KV cache (same seed, same tokens) on ``--speed``
   prompts.

Run: ``OMP_NUM_THREADS=1 python benchmarks/generators_crystallm.py --n 200 --out runs/crystallm/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch


def _load(path: Path, n: int, seed: int) -> tuple[list[str], list[str]]:
    import csv

    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    idx = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i]["material_id"] for i in idx], [rows[i]["cif"] for i in idx]


def _csp(samples: list[list[Any]], refs: list[Any], ids: list[str], k: int) -> dict[str, Any]:
    """Match rate / RMSE over all ``len(refs)`` test structures; a structure matches when any of its
    kept samples (at most ``k``, the ones that parsed or passed the checks) matches."""
    from crystal_metrics.csp import csp_metrics

    if not any(samples):
        return {"k": k, "match_rate": 0.0, "rmse": None, "num_matched": 0, "note": "no sample to match"}
    out = csp_metrics(samples, refs, ks=[max(len(s) for s in samples)], ids=ids)
    (res,) = out["k"].values()
    return {
        "k": k,
        **res,
        "smact_and_distance_valid_fraction": out.get("valid_fraction"),
        "matcher_errors": len(out.get("errors", [])),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="perov_5", choices=["perov_5", "carbon_24"])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--weights", default=None, help="shipped weights name (default: crystallm-perov5 / -carbon24)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file instead of shipped weights")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--n", type=int, default=200, help="test structures (seeded subset)")
    p.add_argument("--k20", type=int, default=0, help="also 20 samples for the first M of them")
    p.add_argument("--with-space-group", action="store_true", help="prompt with the test space group too")
    p.add_argument("--speed", type=int, default=32, help="prompts for the KV-cache timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/crystallm/bench.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")

    from pymatgen.core import Structure

    from crystal_crystallm.canonical import canonical_from_cif, parse_composition
    from crystal_crystallm.checks import check_cif
    from crystal_crystallm.generator import CrystaLLMGenerator, Request
    from crystal_crystallm.spacegroups import SPACE_GROUP_SYMBOLS

    weights = a.weights or {"perov_5": "crystallm-perov5", "carbon_24": "crystallm-carbon24"}[a.dataset]
    ids, cifs = _load(Path(a.data_root) / a.dataset / "test.csv", a.n, a.seed)
    refs = [Structure.from_str(c, fmt="cif") for c in cifs]
    t0 = time.perf_counter()
    canon = [canonical_from_cif(c) for c in cifs]
    canon_seconds = time.perf_counter() - t0
    requests = []
    for text in canon:
        formula = text.split("\n", 1)[0][len("data_") :]
        sg = None
        if a.with_space_group:
            symbol = next(ln for ln in text.split("\n") if ln.startswith("_symmetry_space_group_name_H-M"))
            sg = SPACE_GROUP_SYMBOLS.index(symbol.split(" ", 1)[1]) + 1
        requests.append(Request(parse_composition(formula), sg))

    source: dict[str, Any] = {"checkpoint": a.checkpoint} if a.checkpoint else {"weights": weights}
    sampling = {"temperature": a.temperature, "top_k": a.top_k}
    gen = CrystaLLMGenerator(device="cpu", **source, **sampling)
    result: dict[str, Any] = {
        "dataset": a.dataset,
        "split": "test.csv",
        "subset": f"{len(ids)} structures, random.Random({a.seed}).sample of the rows",
        "weights": a.checkpoint or weights,
        "weights_sha256": gen.weights_sha256,
        "model": json.loads(gen.net.cfg.model_dump_json()),
        "parameters": gen.net.num_parameters(),
        "prompt": "composition + space group" if a.with_space_group else "composition",
        "sampling": sampling,
        "machine": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()} (2 cores shared by ~6 jobs)",
    }

    # ---- reference ceiling: the real canonical CIFs through the same checks
    t0 = time.perf_counter()
    real = [check_cif(t, expected=r.composition, expected_space_group=r.space_group) for t, r in zip(canon, requests)]
    result["real_cifs_checks"] = {
        "fraction_valid": sum(c.valid for c in real) / len(real),
        "failures": _count(real),
        "seconds_per_cif": (time.perf_counter() - t0) / len(real),
    }

    # ---- k = 1
    samples = gen.sample(requests, seed=a.seed)
    rep = gen.last_report
    result["k1"] = {
        "report": rep.as_dict(),
        "structures_per_second_sampling": rep.num_sampled / rep.sampling_seconds,
        "tokens_per_second": rep.tokens_generated / rep.sampling_seconds,
        "checks_seconds_per_cif": rep.checking_seconds / rep.num_sampled,
        "mean_bond_length_score": _mean([s.check.bond_score for s in samples if s.check.bond_score is not None]),
    }
    parsed = [[s.check.structure] if s.check.passed.get("parse") else [] for s in samples]
    checked = [[s.check.structure] if s.check.valid else [] for s in samples]
    result["k1"]["csp_all_parsed"] = _csp(parsed, refs, ids, 1)
    result["k1"]["csp_checked_only"] = _csp(checked, refs, ids, 1)

    # ---- k = 20 on a prefix
    if a.k20:
        m = min(a.k20, len(requests))
        many = gen.sample([r for r in requests[:m] for _ in range(20)], seed=a.seed + 1)
        rep20 = gen.last_report
        parsed20 = [
            [s.check.structure for s in many[i * 20 : (i + 1) * 20] if s.check.passed.get("parse")] for i in range(m)
        ]
        checked20 = [[s.check.structure for s in many[i * 20 : (i + 1) * 20] if s.check.valid] for i in range(m)]
        result["k20"] = {
            "num_structures": m,
            "report": rep20.as_dict(),
            "csp_all_parsed": _csp(parsed20, refs[:m], ids[:m], 20),
            "csp_checked_only": _csp(checked20, refs[:m], ids[:m], 20),
        }

    # ---- KV cache speed-up (same seed: the same tokens)
    sub = requests[: a.speed]
    timing = {}
    texts = {}
    for flag in (True, False):
        g = CrystaLLMGenerator(device="cpu", **source, **sampling, kv_cache=flag, check_bond_lengths=False)
        s = g.sample(sub, seed=a.seed)
        timing[flag] = g.last_report.sampling_seconds
        texts[flag] = [x.text for x in s]
    result["kv_cache"] = {
        "prompts": len(sub),
        "seconds_cached": timing[True],
        "seconds_uncached": timing[False],
        "speedup": timing[False] / timing[True],
        "same_tokens": texts[True] == texts[False],
        "structures_per_second_cached": len(sub) / timing[True],
        "structures_per_second_uncached": len(sub) / timing[False],
    }
    result["canonicalisation_seconds_per_cif"] = canon_seconds / len(cifs)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0


def _count(checks: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in checks:
        if c.reason:
            key = c.reason.split(":", 1)[0]
            out[key] = out.get(key, 0) + 1
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    sys.exit(main())
