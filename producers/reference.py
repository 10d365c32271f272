"""Reference logprobs scored by the producer at rollout time (`[trainer.algorithm.kl]
reference = "producer"`), so the learner needs no second model.

The producer loads the run's initial checkpoint (`RunContext.init_checkpoint`) once, frozen, on
the engine's device and dtype, and scores each published group with one teacher-forced forward
over prompt ++ response per sample, right-padded into one batch:

    reference_logprobs[i] = log softmax(h(x)[P - 1 + i] @ W^T / temperature)[r[i]]

at the sampler's temperature, the same alignment as the trainer's batch (consumers/trainer/
batch.py), with the recorded MoE routing forced at response positions. Computed in float32
logits whatever the model dtype. Close to, not bit-equal with, what the learner would compute
(another batch shape, and the engine's dtype): the KL before the first update is near 0, not
exactly 0. Replay reads the recorded column, so it stays bit-exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from streamrl.hooks.rollout import RolloutSample
from streamrl.models import CausalLM, load_checkpoint, token_logprobs


class ReferenceScorer:
    """The frozen initial weights and the forward that scores a group's responses."""

    def __init__(self, checkpoint: Path, *, temperature: float, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        model: CausalLM = load_checkpoint(Path(checkpoint))
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.temperature, self.device = temperature, device

    @torch.no_grad()
    def score(self, samples: Sequence[RolloutSample]) -> list[npt.NDArray[np.float32]]:
        """[num_response_tokens] float32 log ref per sample, in order."""
        lengths = [len(s.prompt_tokens) + len(s.response_tokens) for s in samples]
        B, S = len(samples), max(lengths)
        tokens = np.zeros((B, S), np.int64)
        targets = np.zeros((B, S), np.int64)
        routed = next((s.routed_experts for s in samples if s.routed_experts is not None), None)
        routing = mask = None
        if routed is not None:
            top_k = routed.shape[2]
            routing = np.broadcast_to(np.arange(top_k, dtype=np.int32),
                                      (B, S, *routed.shape[1:])).copy()
            mask = np.zeros((B, S), np.bool_)
        for b, (s, n) in enumerate(zip(samples, lengths, strict=True)):
            seq = np.concatenate([s.prompt_tokens, s.response_tokens]).astype(np.int64)
            tokens[b, :n], targets[b, :n - 1] = seq, seq[1:]
            if routing is not None and mask is not None and s.routed_experts is not None:
                P, R = len(s.prompt_tokens), len(s.response_tokens)
                routing[b, P - 1:P - 1 + R], mask[b, P - 1:P - 1 + R] = s.routed_experts, True
        positions = torch.arange(S, device=self.device).expand(B, S)
        out = self.model(torch.from_numpy(tokens).to(self.device), positions,
                         forced_routing=None if routing is None
                         else torch.from_numpy(routing).to(self.device),
                         routing_mask=None if mask is None
                         else torch.from_numpy(mask).to(self.device), return_hidden=True)
        logprobs = token_logprobs(out.hidden, self.model.lm_head.weight,
                                  torch.from_numpy(targets).to(self.device),
                                  temperature=self.temperature)[0].float().cpu().numpy()
        return [logprobs[b, len(s.prompt_tokens) - 1:n - 1].copy()
                for b, (s, n) in enumerate(zip(samples, lengths, strict=True))]
