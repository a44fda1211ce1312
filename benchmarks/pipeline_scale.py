"""Benchmark: one screening pipeline, local executor versus Ray with 1 and 2 workers.

    N PyXtal candidates (chemical system --elements) -> CHGNet relax (--max-steps FIRE steps at
    most) -> CGCNN predict (cgcnn-perov5-heat-ref) -> results.csv

``--light`` replaces relax + predict by a cheap metrics step, to measure the executor's own
overhead and the driver's memory at larger N. ``--source parquet`` reads N crystals from one
Parquet table with a ``cif`` column (the Perov-5 test CIFs of ``../shared/data``, repeated
under new ids) instead of generating them: a streaming file source, cheaper than PyXtal.

Each mode runs in a fresh Python process (so that its peak RSS is its own): ``local``, then
``ray1`` and ``ray2`` (a local Ray instance with --workers-cpus CPUs; each worker actor holds
one CPU and --threads torch threads). Printed per mode: wall time of the run (Ray start-up
included and, separately, excluded), structures/s, the scaling efficiency of 2 workers against
1 (throughput ratio / 2), and the peak RSS of the driver process (for Ray: the driver only;
its workers are other processes). Memory must stay flat as the source grows: run with
``--n 1000`` and ``--n 10000`` and compare the driver's peak.

    python benchmarks/pipeline_scale.py --n 1000 --max-steps 20 --threads 1
    python benchmarks/pipeline_scale.py --n 10000 --max-steps 20 --modes ray2   # memory at 10x

A mode's numbers are only compared with the other modes of the same invocation (same
machine, same load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pipeline(args: argparse.Namespace, mode: str) -> dict:
    ray_cfg = {"workers": 1 if mode == "ray1" else 2, "cpus_per_worker": 1}
    return {
        "pipeline": {
            "name": f"scale-{mode}",
            "seed": 0,
            "device": "cpu",
            "chunk_size": args.chunk_size,
            "executor": "local" if mode == "local" else "ray",
            "ray": ray_cfg if mode != "local" else {},
        },
        "source": {
            "type": "generate",
            "generator": "pyxtal",
            "num_samples": args.n,
            "chemical_system": args.elements,
            "config": {"max_atoms": args.max_atoms},
        }
        if args.source == "pyxtal"
        else {"type": "files", "paths": [args.parquet_path]},
        "steps": [
            {"id": "relax", "type": "relax", "potential": "chgnet", "fmax": 0.1, "max_steps": args.max_steps},
            {"id": "prop", "type": "predict", "encoder": "cgcnn", "config": {"weights": "cgcnn-perov5-heat-ref"}},
        ]
        if not args.light
        else [{"id": "m", "type": "metrics", "names": ["density"]}],
    }


def one(args: argparse.Namespace) -> None:
    """Child process: run one mode, print one JSON line."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from crystal_pipeline import run_pipeline

    mode = args.one
    t0 = time.perf_counter()
    started_ray = 0.0
    if mode != "local":
        import ray

        ray.init(num_cpus=args.workers_cpus, include_dashboard=False, log_to_driver=False)
        started_ray = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        res = run_pipeline(pipeline(args, mode), Path(tmp) / "run")
        run_s = time.perf_counter() - t1
    counts = res.manifest["counts"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "mode": mode,
                "n": args.n,
                "ray_start_s": round(started_ray, 2),
                "run_s": round(run_s, 2),
                "total_s": round(time.perf_counter() - t0, 2),
                "ok": counts.get("ok", 0),
                "failed": counts.get("failed", 0),
                "driver_peak_rss_mb": round(rss_mb, 1),
            }
        )
    )


def _make_parquet(n: int, target: Path) -> str:
    """``n`` rows (``material_id``, ``cif``): the Perov-5 test CIFs repeated under new ids."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "perov_5" / "test.csv"
    if not src.is_file():
        sys.exit(f"pipeline_scale: --source parquet needs {src}")
    with src.open(newline="") as fh:
        cifs = [row["cif"] for row in csv.DictReader(fh)]
    rows = [cifs[k % len(cifs)] for k in range(n)]
    table = pa.table({"material_id": [f"c{k:07d}" for k in range(n)], "cif": rows})
    pq.write_table(table, target, row_group_size=4096)
    return str(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="PyXtal candidates")
    ap.add_argument("--max-steps", type=int, default=20, help="FIRE steps per crystal at most")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (driver and each worker)")
    ap.add_argument("--chunk-size", type=int, default=32, help="crystals per block")
    ap.add_argument("--max-atoms", type=int, default=12, help="PyXtal: atoms per cell at most")
    ap.add_argument("--elements", nargs="+", default=["Li", "Mn", "O"], help="chemical system")
    ap.add_argument("--workers-cpus", type=int, default=2, help="CPUs given to the local Ray instance")
    ap.add_argument(
        "--light",
        action="store_true",
        help="a metrics step instead of relax + predict: measures the executor and the driver's memory, not the models",
    )
    ap.add_argument("--source", choices=["pyxtal", "parquet"], default="pyxtal", help="where the N crystals come from")
    ap.add_argument("--parquet-path", help=argparse.SUPPRESS)
    ap.add_argument("--modes", nargs="+", default=["local", "ray1", "ray2"], choices=["local", "ray1", "ray2"])
    ap.add_argument("--one", choices=["local", "ray1", "ray2"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    extra: list[str] = []
    tmpdir = tempfile.TemporaryDirectory()
    if args.source == "parquet":
        extra = ["--parquet-path", _make_parquet(args.n, Path(tmpdir.name) / "candidates.parquet")]
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--one", mode, *sys.argv[1:], *extra]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            sys.exit(f"pipeline_scale: mode {mode} failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(lines[-1])
    tmpdir.cleanup()
    print(
        f"n={args.n} source={args.source} light={args.light} max_steps={args.max_steps} threads={args.threads} "
        f"chunk={args.chunk_size}"
    )
    print(f"{'mode':6} {'run s':>8} {'+ray s':>7} {'struct/s':>9} {'ok':>6} {'failed':>6} {'driver RSS MB':>14}")
    for mode, r in results.items():
        rate = args.n / r["run_s"] if r["run_s"] else float("nan")
        r["structures_per_s"] = round(rate, 3)
        print(
            f"{mode:6} {r['run_s']:8.1f} {r['ray_start_s']:7.1f} {rate:9.2f} {r['ok']:6d} {r['failed']:6d} "
            f"{r['driver_peak_rss_mb']:14.0f}"
        )
    if "ray1" in results and "ray2" in results:
        eff = results["ray2"]["structures_per_s"] / results["ray1"]["structures_per_s"] / 2
        print(f"scaling efficiency, 2 workers vs 1: {eff:.2f}")
    if "local" in results and "ray1" in results:
        print(
            f"ray1 / local throughput: {results['ray1']['structures_per_s'] / results['local']['structures_per_s']:.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
