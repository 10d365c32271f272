"""The multi-GPU benchmarks' CPU smoke modes: the same code paths (process groups, two recipe runs
read back from the log) on gloo and the tiny recipe, so CI exercises them. Their figures are not
the goals; the result files say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.multigpu import async_vs_sync, nccl_broadcast
from tests.helpers import TINY


@pytest.mark.slow
def test_broadcast_bench_measures_ours_and_the_all_reduce_baseline(tmp_path: Path) -> None:
    r = nccl_broadcast.run(tmp_path, gpus=3, gb=0.002, versions=1, bucket_mb=1, smoke=True)
    assert r["smoke"] and r["backend"] == "gloo" and r["world_size"] == 3
    assert r["bytes"] >= 2_000_000 and len(r["send_s"]) == len(r["publish_s"]) == 1
    assert r["broadcast_gbps"] > 0 and r["allreduce_busbw_gbps"] > 0
    assert r["ratio"] == pytest.approx(r["broadcast_gbps"] / r["allreduce_busbw_gbps"])
    assert json.loads((tmp_path / "nccl_broadcast.json").read_text())["smoke"] is True


def test_the_staleness_section_of_a_recipe_is_replaced() -> None:
    text = TINY.read_text()
    out = async_vs_sync.with_staleness(text, async_vs_sync.SYNC)
    assert 'policy = "streamrl.staleness:Synchronous"' in out and "MaxLag" not in out
    assert out.count("[staleness]") == 1 and "[trainer]" in out  # other sections untouched
    added = async_vs_sync.with_staleness("[run]\nname = 'x'\n", async_vs_sync.ASYNC.format(n=2))
    assert added.endswith('[staleness]\npolicy = "streamrl.staleness:AdmissionControl"\n'
                          "options = { max_staleness = 2 }\n\n")


@pytest.mark.slow
def test_async_vs_sync_runs_the_recipe_twice_with_equal_samples(tmp_path: Path) -> None:
    r = async_vs_sync.run(tmp_path, TINY, max_staleness=1,
                          max_versions=2, producers=None, reward_tol=1.0, smoke=True)
    sync, asyn = r["runs"]["sync"], r["runs"]["async"]
    assert sync["num_versions"] == asyn["num_versions"] == 2
    assert set(sync["staleness"]) == {0}  # synchronous: every trained sample is on-policy
    assert sum(sync["staleness"].values()) == sum(asyn["staleness"].values()) == 2 * 8
    assert max(asyn["staleness"]) <= 1
    assert r["speedup"] == pytest.approx(sync["wall_s"] / asyn["wall_s"])
