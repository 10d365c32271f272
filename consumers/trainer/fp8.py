"""FP8 training (`[trainer.compute] precision = "fp8"`): the decoder's linear projections become
torchao float8 training linears; everything else is the bf16 path (compute.py).

torchao's `Float8Linear` subclasses `nn.Linear` and keeps its weight as the same fp32
parameter: each forward casts the weight and the input to float8_e4m3fn with dynamic
per-tensor scales ("tensorwise", torchao's fastest recipe and torchtitan's default) and runs
`torch._scaled_mm`; backward does the same for the gradient GEMMs. So the master weights, the
AdamW state, checkpoints, `hf_state_dict` and every digest are exactly what a bf16 run has;
only the GEMMs' precision changes. Embeddings, norms, the router and the LM head stay bf16.

torchao is the optional extra `fp8` (GPU only): its wheel (~3 MB) installs with `--no-deps`
next to the preinstalled torch. `ComputeConfig` refuses precision = "fp8" when it
is missing, before anything starts.
"""

from __future__ import annotations

from torch import nn

RECIPE = "tensorwise"
"""torchao's Float8LinearRecipeName: dynamic per-tensor scales, cuBLAS FP8 GEMMs."""


def trains_in_fp8(module: nn.Module, fqn: str) -> bool:
    """The linears converted: the decoder's projections (`*_proj`: attention, dense MLPs, a
    shared expert) whose dimensions are multiples of 16 (what FP8 GEMMs take); never the LM
    head or the router."""
    return (isinstance(module, nn.Linear) and fqn.endswith("_proj")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def to_float8_training(model: nn.Module) -> list[str]:
    """Swap `model`'s projections for torchao `Float8Linear` in place (before FSDP and
    compile); returns the names of the converted modules."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as error:  # ComputeConfig checks first; a broken install lands here
        raise ValueError(f"precision = \"fp8\" needs torchao's float8 training, which does not "
                         f"import here ({error}); pip install torchao, or set precision = "
                         "\"bf16\"") from None
    names = [fqn for fqn, m in model.named_modules() if trains_in_fp8(m, fqn)]
    convert_to_float8_training(model, module_filter_fn=trains_in_fp8,
                               config=Float8LinearConfig.from_recipe_name(RECIPE))
    return names
