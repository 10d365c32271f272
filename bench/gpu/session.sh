#!/usr/bin/env bash
# One GPU call's worth of checks: the CUDA tests of the grouped MoE, paged engine, LoRA, deferred
# digest, planner, MLA and the frontier families' megatron conversion, then one benchmark
# (BENCH="module args", e.g. BENCH="bench.mla_decode --device cuda"). Each step has its own time limit and
# writes its log under $OUT as it goes, so a call cut short still returns what ran.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.txt" 2>&1
date -u +%FT%TZ >> "$OUT/card.txt"
python3 -m pip install -q --no-deps --no-index .whl/*.whl > "$OUT/pip.log" 2>&1
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? ${SECONDS}-${t0}s" | awk '{split($3,a,"-"); print $1, $2, a[1]-a[2] "s"}' \
        | tee -a "$OUT/steps.txt"
}
step tests "${TESTS_S:-170}" python3 -m pytest -q -p no:cacheprovider --timeout 60 -v --tb=short \
    tests/models/test_moe_grouped.py tests/engine/test_cuda_moe.py tests/engine/test_cuda_kernels.py \
    tests/engine/test_cuda_engine.py tests/models/test_fp8_linear.py tests/models/test_int4_kernel.py \
    tests/lora/test_lora_cuda.py tests/weights/test_cuda_ipc_deferred.py \
    tests/models/test_fp8_training.py tests/plan/test_plan_memory_gpu.py \
    tests/models/test_mla_gpu.py tests/engine/test_cuda_families.py
# megatron in its own process (it builds models over a CPU process group as well): the frontier
# families (MLA, sigmoid router) against the torch backend, then the CPU conversion tests that CI
# skips (CI's Python 3.11 venv cannot install megatron-core 0.19, which needs 3.12)
step megatron "${MEGATRON_S:-240}" python3 -m pytest -q -p no:cacheprovider --timeout 120 -v \
    --tb=short tests/megatron/test_megatron_frontier_gpu.py tests/megatron/test_megatron_frontier_convert.py
[ -n "${BENCH:-}" ] && step bench "${BENCH_S:-200}" python3 -m $BENCH
tail -15 "$OUT/tests.log"
