#!/bin/bash
# Issue 6's GPU measurements in one device call (see docs/gpu.md). Needs the wheels in .whl/
# (megatron-core, and the project deps the device image lacks: msgspec, crc32c, aiokafka,
# async-timeout, pytest-asyncio), all for cp312.
#   bash bench/gpu_session.sh tests sync mfu     # any of: tests sync mfu run
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-index .whl/*.whl 2>&1 | tail -2
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
for step in "$@"; do
  case $step in
    tests) python3 -m pytest -q -p no:cacheprovider tests/trainer/test_cuda_learner.py \
             tests/weights/test_cuda_ipc.py tests/weights/test_weights_contract.py \
             tests/engine/test_weight_plan.py tests/engine/test_packing.py \
             tests/engine/test_cuda_engine.py \
             tests/megatron -rs 2>&1 | tee "$OUT/tests.log" ;;
    sync) python3 -m bench.weight_sync --out "$OUT" 2>&1 | tee "$OUT/sync.log" ;;
    mfu) python3 -m bench.trainer_mfu --out "$OUT" ${MFU_ONLY:+--only "$MFU_ONLY"} 2>&1 | tee "$OUT/mfu.log" ;;
    run) python3 -m bench.gpu_run --out /tmp/gpu_run 2>&1 | tail -60 | tee "$OUT/run.log"
         cp /tmp/gpu_run/gpu_run.json "$OUT/" ;;
  esac
done
