"""`streamrl plan RECIPE --gpus N --gpu-memory 80GiB`: parameters, memory per GPU, weight-sync and
routing bytes of a recipe's placement, from the model's config.json alone (no weights needed).

    streamrl plan recipes/frontier/deepseek_v3/recipe.toml --gpus 256 --gpu-memory 80GiB
    streamrl plan my.toml --gpus 8 --gpu-memory 141GB --config-json ~/models/x/config.json

config.json is `--config-json`, else the one in `model.path`, else the one beside the recipe.
Exit code 0 when the placement fits, 1 when it does not (each overflow named with its size),
2 for a bad recipe, config.json or argument. Formulas: streamrl/plan/memory.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from streamrl.plan import Plan, make_plan, parse_bytes
from streamrl.plan.placement import gib
from streamrl.recipe.config import RunConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe TOML file")
    p.add_argument("--gpus", type=int, required=True, help="GPUs for the whole run")
    p.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU (default 80GiB)")
    p.add_argument("--config-json", type=Path, default=None,
                   help="the model's config.json (default: model.path's, else beside the recipe)")
    p.add_argument("--reserve", type=float, default=0.1,
                   help="fraction of each GPU left for CUDA context, fragmentation, NCCL and "
                        "engine workspace (default 0.1)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        config = read_recipe(args.recipe)
        hf_config = read_hf_config(config, args.recipe, args.config_json)
        if args.gpus < 1 or not 0 <= args.reserve < 1:
            raise ValueError(f"--gpus ({args.gpus}) must be >= 1 and --reserve ({args.reserve}) "
                             "in [0, 1)")
        plan = make_plan(config, hf_config, num_gpus=args.gpus,
                         gpu_bytes=parse_bytes(args.gpu_memory), reserve=args.reserve)
    except ValueError as error:
        console.print(f"[red]streamrl plan: {error}[/red]", highlight=False)
        return 2
    print_plan(plan, console, title=str(args.recipe))
    if plan.fits:
        console.print(f"[green]fits[/green] on {plan.num_gpus} GPUs of "
                      f"{gib(plan.gpu_bytes)}", highlight=False)
        return 0
    for overflow in plan.overflows:
        console.print(f"[red]does not fit: {overflow}[/red]", highlight=False)
    return 1


def read_recipe(path: Path) -> RunConfig:
    """The recipe decoded and checked, without resolving hooks or reading files (a plan needs
    neither the weights nor the data)."""
    try:
        return msgspec.toml.decode(path.read_bytes(), type=RunConfig)
    except FileNotFoundError:
        raise ValueError(f"recipe {str(path)!r} does not exist") from None
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def read_hf_config(config: RunConfig, recipe: Path, given: Path | None) -> dict[str, Any]:
    candidates = [given] if given is not None else [
        *([Path(config.model.path).expanduser() / "config.json"] if config.model.path else []),
        recipe.parent / "config.json"]
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not JSON ({error})") from None
    raise ValueError(f"no config.json at {', '.join(map(str, candidates))}: pass --config-json")


def _billions(n: float) -> str:
    """Billions to two decimals; a model under 10M parameters (a tiny twin) exactly."""
    return f"{n / 1e9:,.2f} B" if n >= 1e7 else f"{int(n):,}"


def print_plan(plan: Plan, console: Console, *, title: str) -> None:
    p = plan.params
    table = Table(title=f"{title}: {plan.model_type}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("parameters, total", _billions(p.total))
    table.add_row("active per token", _billions(p.active))
    table.add_row("active, without embedding and LM head", _billions(p.active_non_embedding))
    console.print(table)

    place = Table(title="placement", show_header=False)
    place.add_column("", style="bold")
    place.add_column("", justify="right")
    place.add_row("GPUs", f"{plan.num_gpus} x {gib(plan.gpu_bytes)} "
                          f"(usable {gib(plan.usable_bytes)} each)")
    place.add_row("engines", f"{plan.engine_gpus} GPUs, tensor parallel {plan.engine_tensor}, "
                             f"batch {plan.engine_batch} x {plan.seq_len} tokens")
    layout = plan.parallel
    place.add_row("trainer", f"{plan.trainer_gpus} GPUs" + (
        f": TP {layout.tensor} x PP {layout.pipeline} x DP {layout.data}, EP {layout.expert}, "
        f"micro-batch {plan.rows_per_microbatch} x {plan.seq_len} tokens" if layout else "")
        + (" (colocated with the engines)" if plan.colocated else ""))
    console.print(place)

    memory = Table(title="memory per GPU")
    memory.add_column("term")
    memory.add_column("trainer", justify="right")
    memory.add_column("engine", justify="right")
    t, e = plan.trainer, plan.engine
    rows = [("weights", t and t.weights, e.weights),
            ("gradients", t and t.gradients, None),
            ("optimizer (sharded over DP)", t and t.optimizer, None),
            ("activations", t and t.activations, None),
            ("LM-head logits chunk", t and t.logits, None),
            ("KV cache", None, e.kv_cache)]
    if t and t.not_live:
        rows.append(("not live at the peak (gradients vs activations)", -t.not_live, None))
    for name, a, b in rows:
        memory.add_row(name, "" if a is None else gib(a), "" if b is None else gib(b))
    memory.add_row("[bold]total[/bold]", gib(t.total) if t else "-", gib(e.total))
    console.print(memory)

    traffic = Table(title="traffic", show_header=False)
    traffic.add_column("", style="bold")
    traffic.add_column("", justify="right")
    traffic.add_row("weight sync per version, per engine", gib(plan.weight_sync_bytes))
    traffic.add_row("routing per sample (packed)", f"{plan.routing_bytes_per_sample:,} B")
    traffic.add_row("routing per version", f"{plan.routing_bytes_per_version / 2**20:,.1f} MiB")
    traffic.add_row("KV per token per engine GPU", f"{e.kv_bytes_per_token:,} B")
    console.print(traffic)
