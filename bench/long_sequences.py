"""The trainer at long rows: step time and peak memory with and without activation
checkpointing and with token-budget micro-batches, against the planner's prediction.

    python -m bench.long_sequences                       # CPU (fp32): BENCHMARKS.md section
    python -m bench.long_sequences --gpu --out /tmp/ls   # on the GPU (bf16): writes JSON
    python -m bench.long_sequences --record /tmp/ls/long_sequences_gpu.json  # its section

CPU: a 4-layer Qwen3 shape, 2 rows of 2,048 tokens (256 prompt + 1,792 response). Each case
runs in a fresh process: after a short warm-up step (Adam's state exists), peak = the growth
of the bytes glibc's malloc has handed out (`HeapPeak`) over two long steps, against the plan
less weights and optimizer state; time = the median of the 2 steps, wall and CPU. GPU: a 0.6B
Qwen3 shape (28 layers, vocab 151,936), 2 rows of 8,192 tokens, bf16 autocast; peak =
`torch.cuda.max_memory_allocated` of two steady-state steps. Plan = `streamrl.plan.learner`'s
arithmetic for the same rows.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from bench.common import ROOT, machine_info, replace_section
from bench.trainer_mfu import samples

CPU_SHAPE = {"model_type": "qwen3", "vocab_size": 4096, "hidden_size": 256,
             "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 4, "head_dim": 32, "tie_word_embeddings": False,
             "rope_theta": 1_000_000.0, "max_position_embeddings": 8192}
GPU_SHAPE = {**CPU_SHAPE, "vocab_size": 151_936, "hidden_size": 1024,
             "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True,
             "max_position_embeddings": 32768}
CPU_ROWS, CPU_PROMPT, CPU_RESPONSE = 2, 256, 1792
GPU_ROWS, GPU_PROMPT, GPU_RESPONSE = 2, 512, 7680
CASES = {  # name -> [trainer.compute] options beyond the device's defaults
    "no checkpointing": {"activation_checkpointing": False},
    "checkpointing": {"activation_checkpointing": True},
    "checkpointing + micro_batch_tokens = 1 row": {"activation_checkpointing": True,
                                                   "micro_batch_tokens": -1},
}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]


class HeapPeak:
    """The peak of glibc's bytes in use (`mallinfo2`: heap + mmapped blocks), polled every
    0.2 ms from a thread while torch's kernels run with the GIL released: live bytes, unlike
    the resident set, which keeps what the allocator freed but did not give back."""

    def __init__(self) -> None:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        self._info, self.peak, self._stop = libc.mallinfo2, 0, threading.Event()

    def in_use(self) -> int:
        info = self._info()
        return int(info.uordblks + info.hblkhd)

    def __enter__(self) -> HeapPeak:
        self.before = self.peak = self.in_use()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.in_use())
            time.sleep(0.0002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_case(name: str, gpu: bool) -> dict:
    """One case in this process: the plan, the measured peak and the step time."""
    import msgspec

    from streamrl.consumers.trainer import decoupled_ppo, grpo
    from streamrl.consumers.trainer.learner import Learner, LearnerSetup
    from streamrl.models import CausalLM, ModelConfig
    from streamrl.plan.learner import learner_peak
    from streamrl.recipe.config import RunConfig, TrainerSection
    from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig

    raw = GPU_SHAPE if gpu else CPU_SHAPE
    rows, prompt, response = ((GPU_ROWS, GPU_PROMPT, GPU_RESPONSE) if gpu
                              else (CPU_ROWS, CPU_PROMPT, CPU_RESPONSE))
    seq = prompt + response
    options = dict(CASES[name])
    if options.get("micro_batch_tokens") == -1:
        options["micro_batch_tokens"] = seq
    device = {"device": "cuda", "precision": "bf16"} if gpu else {}
    compute = ComputeConfig(**device, **options)
    recipe = {"run": {"name": "bench"}, "model": {"init": "a:b"},
              "data": {"tokenizer": "a:b", "prompts": "a:b", "samples_per_prompt": rows},
              "rollout": {"reward": "a:b", "engine": {"max_seq_len": seq}},
              "trainer": {"batch_size": rows, "compute": {**device, **options}}}
    plan = learner_peak(msgspec.convert(recipe, RunConfig), raw)
    torch.manual_seed(0)
    learner = Learner(CausalLM(ModelConfig.from_hf_dict(raw)), LearnerSetup(
        trainer=TrainerSection(lr=1e-6, grad_clip=1.0, minibatches=1, batch_size=rows,
                               algorithm=AlgorithmConfig(), compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))
    batch = samples(rows, prompt, response, raw["vocab_size"])
    times, cpu_times = [], []
    if gpu:
        learner.step(batch, [1.0] * rows, version=0)  # type: ignore[arg-type]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:  # a short warm-up step: code pages, thread buffers and Adam's state are resident
        warm = samples(rows, 8, 24, raw["vocab_size"])
        learner.step(warm, [1.0] * rows, version=0)  # type: ignore[arg-type]
    with HeapPeak() as heap:
        for version in range(1, 3):
            started, cpu_started = time.perf_counter(), time.process_time()
            learner.step(batch, [1.0] * rows, version=version)  # type: ignore[arg-type]
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
    peak = torch.cuda.max_memory_allocated() if gpu else heap.peak - heap.before
    # the CPU measure is the step's growth: weights and Adam's state were resident before it
    planned = plan.memory.total - (0 if gpu else plan.memory.weights + plan.memory.optimizer)
    return {"case": name, "rows": rows, "seq": seq, "checkpointing": plan.checkpointing,
            "step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu_times),
            "measured": peak, "plan": planned,
            "activations_plan": plan.memory.activations}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--out", type=Path, default=Path("/tmp/long_sequences"))
    p.add_argument("--record", type=Path, help="write the GPU section from this JSON")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = p.parse_args()
    if args.case is not None:
        torch.set_num_threads(2)
        print(json.dumps(run_case(args.case, args.gpu)))
        return
    if args.record is not None:
        record(json.loads(args.record.read_text()), gpu=True)
        return
    results = []
    for name in CASES:  # a fresh process each
        out = subprocess.run([sys.executable, "-m", "bench.long_sequences", "--case", name,
                              *(["--gpu"] if args.gpu else [])], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name}: {r['step_s']:.2f} s/step, peak {r['measured'] / 2**20:.0f} MiB, "
              f"plan {r['plan'] / 2**20:.0f} MiB", flush=True)
    info = machine_info()
    info["load"] = f"{os.getloadavg()[0]:.1f}"  # other jobs on the cores slow the steps
    if args.gpu:
        info["card"] = torch.cuda.get_device_name()
    data = {"info": info, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "long_sequences_gpu" if args.gpu else "long_sequences"
    (args.out / f"{name}.json").write_text(json.dumps(data, indent=2))
    if not args.gpu:
        record(data, gpu=False)


def record(data: dict, *, gpu: bool) -> None:
    info, results = data["info"], data["results"]
    mib = 2**20
    first = results[0]
    table = "\n".join(
        f"| {r['case']} | {'on' if r['checkpointing'] else 'off'} | {r['step_s']:.2f} | "
        f"{r.get('step_cpu_s', float('nan')):.2f} | "
        f"{r['measured'] / mib:,.0f} | {r['plan'] / mib:,.0f} | "
        f"{r['measured'] / first['measured']:.2f} |" for r in results)
    where = (f"{info['card']}, bf16 autocast, a 0.6B Qwen3 shape (28 layers)" if gpu else
             f"{info['machine']}, fp32, a 4-layer Qwen3 shape (hidden 256, vocab 4096)")
    measure = ("`torch.cuda.max_memory_allocated` of a steady-state step" if gpu else
               "the growth of malloc's bytes in use (mallinfo2, polled every 0.2 ms) over "
               "the steps after a short warm-up step, against the plan less weights and "
               "Adam's state")
    replace_section("long_sequences_gpu" if gpu else "long_sequences", (
        f"`python -m bench.long_sequences{' --gpu' if gpu else ''}` on {where}, "
        f"{info['date']}: one GRPO step over {first['rows']} rows x {first['seq']:,} tokens "
        f"(`[trainer.compute]` options per case). Peak: {measure}; plan: "
        "`streamrl.plan.learner` for the same rows, the figure the trainer checks before its "
        f"first step. MiB; time: median of 2 steps, wall and CPU (process time, both "
        f"threads; load average {info.get('load', '?')} at the end of the run: on a shared "
        "machine wall times vary run to run, CPU time and memory much less).\n\n"
        "| case | checkpointing | s/step | CPU s/step | peak MiB | plan MiB | peak vs none |\n"
        "|---|---|---|---|---|---|---|\n" + table))


if __name__ == "__main__":
    main()
