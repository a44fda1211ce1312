"""The ray executor on a simulated multi-node cluster (``ray.cluster_utils.Cluster``): GPU
scheduling checked with GPUs *declared* on CPU-only nodes (Ray counts them as resources; the
workers still compute on the CPU), so a worker asking for one may only run on such a node."""

from __future__ import annotations

import csv

import pytest

from crystal_pipeline import run_pipeline


@pytest.mark.slow
def test_gpu_workers_run_only_on_nodes_with_gpus(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.add_node(num_cpus=1)  # no GPU: no worker may land here
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")}
        assert len(gpu_nodes) == 2
        data = {
            "pipeline": {
                "chunk_size": 2,
                "device": "auto",  # no CUDA here: the workers resolve it to the CPU
                "executor": "ray",
                "ray": {"workers": 2, "gpus_per_worker": 1},
            },
            "source": {"type": "dataset", "name": "dcdft", "limit": 8},
            "steps": [{"id": "m", "type": "metrics", "names": ["density"]}],
        }
        res = run_pipeline(data, tmp_path / "run")
        ex = res.manifest["executor"]
        assert ex["nodes"] == 3 and ex["gpus_per_worker"] == 1 and ex["workers"] == 2
        assert set(ex["blocks_per_node"]) <= gpu_nodes  # the GPU-less node got no block
        assert sum(ex["blocks_per_node"].values()) == 4  # 8 inputs in blocks of 2, each computed once
        with (tmp_path / "run" / "results.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 8 and all(r["status"] == "ok" and float(r["density"]) > 0 for r in rows)
    finally:
        ray.shutdown()
        cluster.shutdown()
