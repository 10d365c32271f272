"""bench/moe_speed.py runs end to end at its tiny shape on CPU and writes a complete report."""

from __future__ import annotations

import json

import torch

from bench.moe_speed import run, section


def test_moe_speed_bench_quick_runs_and_reports(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny GEMMs: thread start-up would dominate, worse on a busy CI
    try:
        data = run(tmp_path, quick=True)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "moe_speed.json").read_text())["shape"] == "tiny (quick)"
    engine, trainer = data["engine"]["cases"], data["trainer"]["cases"]
    assert {"eager, expert loop", "eager, grouped"} <= engine.keys()
    assert all(c["tokens"] == 2 * 3 for c in engine.values())  # every request ran to the end
    assert 1 <= data["engine"]["roofline"]["mean_touched_experts_per_layer"] <= 8
    assert trainer.keys() == {"dense, same active size", "MoE, expert loop", "MoE, grouped",
                              "MoE, grouped, routing replay"}
    assert all(c["tok_s"] > 0 and c["mfu"] > 0 for c in trainer.values())
    text = section(data)
    assert "| eager, grouped |" in text and "Routing replay costs the trainer" in text
