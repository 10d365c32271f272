"""The megatron-core trainer backend. `convert` (HF ↔ megatron names) needs only torch;
`model` (GPTModel, MegatronLearner) imports megatron-core when used and needs CUDA."""

from streamrl.consumers.trainer.megatron.convert import (
    hf_names,
    hf_to_megatron,
    megatron_shapes,
    megatron_to_hf,
)

__all__ = ["hf_names", "hf_to_megatron", "megatron_shapes", "megatron_to_hf"]
