"""The shared real vLLM server (tests/vllm/real.py) for this folder's tests."""

from tests.vllm.real import vllm_server  # noqa: F401 (a session fixture)
