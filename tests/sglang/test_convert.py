"""SGLang's `/generate` fields converted into our columns, on data shaped exactly as SGLang's source
defines it (python/sglang/srt/...; each test names the file and function)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from streamrl.hooks.generation import SamplingParams
from streamrl.producers.sglang import convert
from streamrl.producers.sglang.convert import SGLangResponseError
from tests.sglang.fake_server import expert_at, sglang_routing

LAYERS, MOE, K, E = 6, (1, 2, 4, 5), 4, 64  # layers 0 and 3 dense, as first_k_dense/mlp_only


def decode(encoded: str, P: int, R: int, start_len: int, num_experts: int = E) -> np.ndarray:
    return convert.routed_experts(encoded, num_prompt_tokens=P, num_response_tokens=R,
                                  start_len=start_len, num_hidden_layers=LAYERS, moe_layers=MOE,
                                  top_k=K, num_experts=num_experts)


@pytest.mark.parametrize("start_len", [0, 3, 6])
def test_routed_experts_pick_response_rows_and_moe_layers(start_len: int) -> None:
    """layers/moe/routed_experts_capturer.py::get_routed_experts returns rows [: seqlen - 1] of
    an int32 [tokens, num_hidden_layers, top_k] buffer (dense layers included); the tokenizer
    manager base64-encodes its bytes; io_struct.GenerateReqInput.routed_experts_start_len S
    keeps positions [S, seqlen - 1). Response token i was sampled at position P - 1 + i."""
    P, R = 7, 5
    out = decode(sglang_routing(P + R, start_len, LAYERS, MOE, K, E), P, R, start_len)
    assert out.shape == (R, len(MOE), K) and out.dtype == np.uint8
    for i in range(R):
        for j, layer in enumerate(MOE):
            assert out[i, j].tolist() == [expert_at(P - 1 + i, layer, s, E) for s in range(K)]


def test_more_than_256_experts_go_to_the_wide_type() -> None:
    P, R, many = 3, 4, 384
    rows = np.random.default_rng(0).integers(300, many, (P + R - 1, LAYERS, K)).astype(np.int32)
    out = decode(base64.b64encode(rows.tobytes()).decode(), P, R, 0, many)
    assert out.dtype == np.uint16
    assert np.array_equal(out, rows[P - 1:][:, list(MOE)])


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:-4], "expected 10 rows"),
    (lambda b: "!!" + b, "base64"),
    (lambda b: None, "enable-return-routed-experts"),
])
def test_malformed_routing_is_refused_with_the_field(mutate, message: str) -> None:
    P, R = 4, 7
    good = sglang_routing(P + R, 0, LAYERS, MOE, K, E)
    with pytest.raises(SGLangResponseError, match=message) as err:
        decode(mutate(good), P, R, 0)
    assert err.value.where == "meta_info.routed_experts"


def test_expert_ids_out_of_range_are_refused() -> None:
    rows = np.full((3, LAYERS, K), E, np.int32)  # id == num_experts
    with pytest.raises(SGLangResponseError, match=r"\[0, 64\)"):
        decode(base64.b64encode(rows.tobytes()).decode(), 2, 2, 0)


def test_version_spans_become_per_token_versions() -> None:
    """utils/weight_versions.py::add_weight_versions_to_meta_info: spans of output token indices,
    contiguous from 0, versions as strings, the last one also in meta_info["weight_version"]."""
    meta = {"weight_version": "5", "weight_versions": [
        {"version": "3", "start": 0, "end": 2}, {"version": "4", "start": 2, "end": 3},
        {"version": "5", "start": 3, "end": 6}]}
    out = convert.response_versions(meta, 6, submitted_version=3)
    assert out.dtype == np.uint32 and out.tolist() == [3, 3, 4, 5, 5, 5]


@pytest.mark.parametrize(("spans", "message"), [
    ([{"version": "default", "start": 0, "end": 3}], "--weight-version 0"),
    ([{"version": "1", "start": 0, "end": 1}, {"version": "2", "start": 2, "end": 3}],
     "not contiguous"),
    ([{"version": "1", "start": 0, "end": 2}], "cover 2 of 3"),
    ([{"version": "1", "begin": 0}], "version, start, end"),
])
def test_bad_spans_are_refused(spans, message: str) -> None:
    with pytest.raises(SGLangResponseError, match=message):
        convert.response_versions({"weight_versions": spans}, 3, submitted_version=1)


def test_without_spans_an_updated_request_keeps_its_oldest_version() -> None:
    """Older SGLang sends only meta_info["weight_version"] (the final one)."""
    same = convert.response_versions({"weight_version": "2"}, 3, submitted_version=2)
    moved = convert.response_versions({"weight_version": "3"}, 3, submitted_version=2)
    assert same.tolist() == [2, 2, 2] and moved.tolist() == [2, 2, 2]


def test_output_token_logprobs_give_tokens_and_logprobs() -> None:
    """managers/tokenizer_manager.py detokenize_logprob_tokens: [logprob, token_id, text|None]."""
    meta = {"output_token_logprobs": [[-0.5, 11, None], [-1.25, 12, None], [0.0, 2, None]]}
    tokens, logprobs = convert.output_tokens(meta, [11, 12, 2])
    assert tokens.dtype == np.int32 and tokens.tolist() == [11, 12, 2]
    assert logprobs.dtype == np.float32 and logprobs.tolist() == [-0.5, -1.25, 0.0]
    with pytest.raises(SGLangResponseError, match="differ from output_ids"):
        convert.output_tokens(meta, [11, 12, 3])
    with pytest.raises(SGLangResponseError, match="return_logprob"):
        convert.output_tokens({}, None)
    with pytest.raises(SGLangResponseError, match="<= 0"):
        convert.output_tokens({"output_token_logprobs": [[0.5, 1, None]]}, None)


@pytest.mark.parametrize(("raw", "ours"), [({"type": "stop", "matched": 2}, "stop"),
                                           ({"type": "length", "length": 8}, "length"),
                                           ({"type": "abort", "message": "x"}, "abort")])
def test_finish_reasons(raw, ours) -> None:
    assert convert.finish_reason({"finish_reason": raw}) == ours


def test_unknown_finish_reason_is_refused() -> None:
    with pytest.raises(SGLangResponseError, match="finish_reason"):
        convert.finish_reason({"finish_reason": None})


def test_generate_payload_asks_exactly_the_response_rows() -> None:
    """sampling/sampling_params.py::SamplingParams: top_k -1 disables; sampling_seed seeds."""
    prompt = np.array([5, 6, 7, 8], np.int32)
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=12,
                            stop_token_ids=(2,))
    body = convert.generate_payload("r1", prompt, params, 99, return_routing=True)
    assert body["input_ids"] == [5, 6, 7, 8] and body["rid"] == "r1"
    assert body["return_logprob"] is True and body["return_routed_experts"] is True
    assert body["routed_experts_start_len"] == 3  # P - 1: the pass that sampled token 0
    sp = body["sampling_params"]
    assert (sp["top_k"], sp["sampling_seed"], sp["stop_token_ids"]) == (-1, 99, [2])
    assert sp["no_stop_trim"] is True  # our response keeps its stop token
    dense = convert.generate_payload("r2", prompt, params, 1, return_routing=False)
    assert "return_routed_experts" not in dense
