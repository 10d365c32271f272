"""FP8 weight versions: block-wise float8_e4m3fn quantization of a state dict at publish time.

With `[weights] dtype = "float8_e4m3fn"` the trainer quantizes each version on its own device
before the transport copies it, so the transport moves (and the engine holds) one byte per
weight of every linear projection instead of two:

    quantized = quantize_state(hf_state_dict)     # "x.weight" (fp8) + "x.weight_scale_inv" (fp32)
    pending = begin_publish(transport, version, hf_state_dict)    # quantizes, then publishes
    published = transport.finish_publish(pending)  # .digest: the trainer's; .quantized_digest

Scheme (`SCHEME`, as DeepSeek-V3's and Miles' FP8 checkpoints lay it out): a 2-D projection
weight W [N, K] is cut into 128x128 blocks (the last ones smaller when N or K is not a multiple
of 128); block (i, j) is stored as q = round_to_e4m3(W_block / s_ij) with s_ij = amax(|W_block|)
/ 448 (448: the largest finite e4m3 value; an all-zero block gets s = 1), and its fp32 s_ij in
`<name>_scale_inv` [ceil(N/128), ceil(K/128)]: the factor that turns q back into W (the name
follows those checkpoints). The element error is at most half a unit in the last place of
e4m3 (3 mantissa bits) times s: |W - q*s| <= 2^-4 * |W| for normal values, and <= 2^-10 * s in
the subnormal range.

Which tensors stay BF16 (`is_quantized`): everything but the linear projections, i.e. the
embeddings, every norm, biases, the MoE router (`mlp.gate`) and the LM head. Those are small
or numerically sensitive (the router picks experts, the head's logits are sampled).

Digests: the announced `digest` stays the canonical `weights_digest` of the trainer's own
tensors (so replay and audit compare it with the learner as before); the quantized tensors the
transport holds have their own `quantized_digest`, which readers check on load.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping

import msgspec
import torch
from torch import Tensor

from streamrl.weights.base import PendingVersion, Published, WeightTransport
from streamrl.weights.digest import weights_digest

DTYPE = "float8_e4m3fn"
"""`[weights] dtype` of an FP8 run, and the dtype of its quantized tensors."""
SCHEME = "float8_e4m3fn/block128x128"
"""`WeightVersionAnnounced.quantization` of a version quantized here."""
BLOCK = 128
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
SCALE_SUFFIX = "_scale_inv"
_PROJECTIONS = ("_proj",)  # q/k/v/o_proj, gate/up/down_proj, per expert and shared


def is_quantized(name: str, tensor: Tensor) -> bool:
    """Whether `name` is quantized to FP8: 2-D floating weights of a linear projection (HF
    names ending `_proj.weight`); embeddings, norms, biases, the router and the LM head are
    not."""
    module, _, leaf = name.rpartition(".")
    return (leaf == "weight" and module.endswith(_PROJECTIONS) and tensor.dim() == 2
            and tensor.is_floating_point())


def quantize_blocks(w: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """(q float8_e4m3fn [N, K], scale_inv float32 [ceil(N/block), ceil(K/block)]) of the 2-D
    `w`, computed on `w`'s device: w ~= q * scale_inv per block (module docstring)."""
    if w.dim() != 2:
        raise ValueError(f"block quantization needs a 2-D weight, got shape {list(w.shape)}")
    N, K = w.shape
    nb, kb = -(-N // block), -(-K // block)
    x = w.detach().float()
    padded = x.new_zeros(nb * block, kb * block)
    padded[:N, :K] = x
    blocks = padded.view(nb, block, kb, block)  # [nb, 128, kb, 128]
    amax = blocks.abs().amax(dim=(1, 3))  # [nb, kb]
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = q.view(nb * block, kb * block)[:N, :K].to(torch.float8_e4m3fn)
    return q.contiguous(), scale.contiguous()


def dequantize_blocks(q: Tensor, scale_inv: Tensor, dtype: torch.dtype = torch.float32,
                      block: int = BLOCK) -> Tensor:
    """q * scale_inv, each scale spread over its block: [N, K] in `dtype`."""
    N, K = q.shape
    expand = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:N, :K]
    return (q.float() * expand).to(dtype)


def quantize_state(tensors: Mapping[str, Tensor], *,
                   keep_dtype: torch.dtype = torch.bfloat16) -> dict[str, Tensor]:
    """The FP8 version of a state dict (HF names): each projection weight as fp8 plus its
    `<name>_scale_inv`, every other tensor cast to `keep_dtype`. Runs on the tensors' device."""
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, t in tensors.items():
            if is_quantized(name, t):
                out[name], out[name + SCALE_SUFFIX] = quantize_blocks(t)
            else:
                out[name] = t.detach().to(keep_dtype) if t.is_floating_point() else t.detach()
    return out


def is_quantized_state(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a loaded version is an FP8 one (it holds fp8 tensors)."""
    return any(t.dtype == torch.float8_e4m3fn for t in tensors.values())


def split_state(tensors: Mapping[str, Tensor]
                ) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, Tensor]]:
    """({name: (q, scale_inv)} of the quantized weights, {name: tensor} of the rest) of an FP8
    version, refusing fp8 tensors without a scale (or scales without their weight)."""
    quantized, rest = {}, {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            weight = name.removesuffix(SCALE_SUFFIX)
            if weight not in tensors:
                raise ValueError(f"FP8 weights: `{name}` has no weight `{weight}`")
            continue
        if t.dtype == torch.float8_e4m3fn:
            scale = tensors.get(name + SCALE_SUFFIX)
            if scale is None:
                raise ValueError(f"FP8 weights: `{name}` is float8_e4m3fn but "
                                 f"`{name}{SCALE_SUFFIX}` is missing")
            want = [-(-n // BLOCK) for n in t.shape]
            if list(scale.shape) != want:
                raise ValueError(f"FP8 weights: `{name}{SCALE_SUFFIX}` has shape "
                                 f"{list(scale.shape)}, expected {want} (128x128 blocks of "
                                 f"{list(t.shape)})")
            quantized[name] = (t, scale)
        else:
            rest[name] = t
    return quantized, rest


def dequantize_state(tensors: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """An FP8 version back under plain HF names, every quantized weight dequantized to
    `dtype` (what an engine without FP8 linears for a weight loads)."""
    quantized, rest = split_state(tensors)
    return rest | {n: dequantize_blocks(q, s, dtype) for n, (q, s) in quantized.items()}


def begin_publish(transport: WeightTransport, version: int, tensors: Mapping[str, Tensor], *,
                  quantize: Callable[[Mapping[str, Tensor]], dict[str, Tensor]] = quantize_state,
                  scheme: str = SCHEME, snapshot: bool = True) -> PendingVersion:
    """Publish `tensors` quantized (`quantize_state`, on their device) through `transport`,
    announcing the trainer's own digest: the tensors are snapshotted on their device (one more
    copy of the weights in its memory, as cuda_ipc's cast does) and hashed on a thread beside
    the transport's hashing of the quantized bytes. `transport.finish_publish(pending)` returns
    the Published with `digest` (the trainer's), `quantized_digest` and `quantization` set.
    `snapshot=False` hashes `tensors` themselves, for callers that never change them.
    `quantize` and `scheme` name another format published the same way (INT4 QAT's
    `streamrl.models.quant.int4_payload`)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        source_tensors = ({name: t.detach().clone() for name, t in tensors.items()}
                          if snapshot else tensors)
        quantized = quantize(tensors)
    quantize_ms = (time.perf_counter() - t0) * 1e3
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fp8-source-digest")
    source = pool.submit(weights_digest, source_tensors)
    pool.shutdown(wait=False)  # the thread ends with its one job
    pending = transport.begin_publish(version, quantized)

    def announced(published: Published) -> Published:
        return msgspec.structs.replace(published, digest=source.result(),
                                       quantized_digest=published.digest, quantization=scheme)

    pending.finish = announced
    pending.copy_ms += quantize_ms  # on the trainer's critical path too
    return pending


def publish(transport: WeightTransport, version: int, tensors: Mapping[str, Tensor]
            ) -> Published:
    """`begin_publish` and `finish_publish` at once, without a snapshot (the driver's initial
    version, read from the checkpoint and never changed)."""
    return transport.finish_publish(begin_publish(transport, version, tensors, snapshot=False))
