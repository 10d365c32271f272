"""bench/engine_rl.py runs end to end at its tiny CPU shape: the paged engine holds more
sequences than a static cache of the same memory and prefills each group's prompt once."""

from __future__ import annotations

from bench.engine_rl import run_tiny, summary


def test_engine_rl_bench_tiny_runs_and_compares() -> None:
    r = run_tiny(num_prompts=2)  # 2 prompts x 4 samples; every sequence ran to its length
    static, paged = r["static"], r["paged"]
    assert static["tokens"] == paged["tokens"] > 0
    assert paged["max_resident"] > static["max_resident"]
    assert static["prefill_tokens"] == 8 * 32  # every sample prefills its prompt
    assert paged["prefill_tokens"] < static["prefill_tokens"]  # (recomputes included)
    assert "paged+shared" in summary(r)
