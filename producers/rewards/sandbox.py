"""Reward worker processes: every reward call of a producer runs in one, bounded by a timeout.

    spec = RewardRecipe(reward=rollout.reward, by_source=rollout.reward_by_source)
    async with RewardSandbox(spec, timeout_s=10.0, num_workers=1) as rewards:
        out = await rewards.score(sample)     # a RewardOutput, whatever the reward function did

Why processes: a thread cannot be stopped, and a signal alarm only interrupts the main thread
between bytecodes, never C code that does not return to the interpreter (a huge integer power,
a user's C extension). A child process can always be killed. So the reward reaches each worker
once, when it starts: a producer (and `streamrl rereward`) sends its reward spec (`RewardRecipe`),
as typed msgpack (`_Setup`), which the worker builds with the recipe's own builder, so anything
a recipe can name runs there, a module-level lambda or closure included. A spec that does not
build is refused when the sandbox is made, one that does not build in a worker when it starts
(the producer's start). Only a function given directly in code (tests, benches) is pickled, by
reference for a module-level function or class: an unpicklable one is refused when the sandbox
is made. The payload is the producer's own, never data read from the log. Each call sends the
`RewardInput` over a pipe as typed msgpack (`_Request`; token ids as int32 bytes) and waits at
most `timeout_s` for the typed reply (`_Reply`), so neither side unpickles a sample or a result.

Guarantees of `score`: it returns, for every input, either the function's own output (checked:
a `RewardOutput` with a finite reward and finite details), or reward 0 with status
"timeout: ..." and details {"timeout": 1.0} (the worker is killed and restarted), or reward 0
with status "error: <Type>: <message>" and details {"error": 1.0} (the function raised or
returned something else; a worker that died is restarted). A reply always belongs to its
request: a worker whose call was cancelled is killed too. Worker start-up does not count
against the timeout. Reward functions that print write to stderr, never into the replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import pickle
import signal
import struct
import sys
from typing import IO, Any, Literal

import msgspec
import numpy as np

from streamrl.hooks.rollout import RewardFn, RewardInput, RewardOutput
from streamrl.recipe.rewards import RewardRecipe

PARENT_ENV = "STREAMRL_REWARD_PARENT"  # the producer's pid, which a worker checks it still has
STARTUP_TIMEOUT_S = 120.0  # importing sympy & co. on a loaded 2-core machine
_LENGTH = struct.Struct(">I")
log = logging.getLogger(__name__)


class _Request(msgspec.Struct, kw_only=True, frozen=True):
    """A `RewardInput` on the wire: the token arrays as little-endian int32 bytes."""

    prompt_id: str
    prompt_text: str | None
    prompt_tokens: bytes
    response_text: str
    response_tokens: bytes
    finish_reason: str
    metadata: dict[str, Any]

    @classmethod
    def of(cls, sample: RewardInput) -> _Request:
        return cls(prompt_id=sample.prompt_id, prompt_text=sample.prompt_text,
                   prompt_tokens=_int32(sample.prompt_tokens), response_text=sample.response_text,
                   response_tokens=_int32(sample.response_tokens),
                   finish_reason=sample.finish_reason, metadata=sample.metadata)

    def sample(self) -> RewardInput:
        return RewardInput(prompt_id=self.prompt_id, prompt_text=self.prompt_text,
                           prompt_tokens=np.frombuffer(self.prompt_tokens, dtype="<i4"),
                           response_text=self.response_text,
                           response_tokens=np.frombuffer(self.response_tokens, dtype="<i4"),
                           finish_reason=self.finish_reason, metadata=self.metadata)


class _Setup(msgspec.Struct, kw_only=True, frozen=True):
    """What a worker loads once: the recipe's reward spec, or (a reward given in code: tests,
    benches) the function pickled by reference."""

    recipe: RewardRecipe | None = None
    function: bytes = b""


class _Reply(msgspec.Struct, frozen=True):
    kind: Literal["ready", "failed", "ok", "error"]
    output: RewardOutput | None = None  # "ok"
    message: str = ""  # "failed", "error"


def _int32(tokens: Any) -> bytes:
    return np.asarray(tokens, dtype="<i4").tobytes()


_ENCODE = msgspec.msgpack.Encoder()
_REQUEST = msgspec.msgpack.Decoder(_Request)
_REPLY = msgspec.msgpack.Decoder(_Reply)


class RewardSandboxError(RuntimeError):
    """The reward function cannot run in a worker process at all (its spec does not build, it
    is not picklable, or its module fails to import there): a configuration problem, raised
    when the producer starts."""


class RewardSandbox:
    def __init__(self, reward: RewardRecipe | RewardFn, *, timeout_s: float,
                 num_workers: int = 1) -> None:
        if isinstance(reward, RewardRecipe):
            try:
                reward.build()  # what the workers will do: fail here, with the field it names
            except Exception as error:
                raise RewardSandboxError(f"the reward cannot be built: {error}") from None
        try:
            setup = (_Setup(recipe=reward) if isinstance(reward, RewardRecipe) else
                     _Setup(function=pickle.dumps(reward, protocol=pickle.HIGHEST_PROTOCOL)))
            payload = msgspec.msgpack.encode(setup)
        except Exception as error:
            raise RewardSandboxError(
                f"the reward {reward!r} cannot be sent to a reward worker process ({error}): "
                "name it in the recipe, or make it a module-level function or class instance "
                "that pickle can send") from None
        self.timeout_s = timeout_s
        env = dict(os.environ)  # the workers import what this process can
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)
        env[PARENT_ENV] = str(os.getpid())
        self.workers = [_Worker(payload, env) for _ in range(num_workers)]
        self.idle: asyncio.Queue[_Worker] = asyncio.Queue()
        for worker in self.workers:
            self.idle.put_nowait(worker)

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the function (RewardSandboxError
        if one cannot)."""
        await asyncio.gather(*(w.start() for w in self.workers))

    async def score(self, sample: RewardInput) -> RewardOutput:
        worker = await self.idle.get()
        try:
            kind, value = await worker.call(sample, self.timeout_s)
        finally:
            self.idle.put_nowait(worker)
        if kind == "ok":
            return value
        if kind == "timeout":
            status = f"timeout: no reward within {self.timeout_s:g} s (worker restarted)"
            details = {"timeout": 1.0}
        else:
            status, details = f"error: {value}", {"error": 1.0}
        log.warning("reward of prompt %s: %s", sample.prompt_id, status)
        return RewardOutput(reward=0.0, details=details, status=status)

    async def close(self) -> None:
        """Stop every worker; idempotent."""
        await asyncio.gather(*(w.stop() for w in self.workers))

    async def __aenter__(self) -> RewardSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Worker:
    """One child process (`python -m streamrl.producers.rewards.sandbox`), one call at a time."""

    def __init__(self, payload: bytes, env: dict[str, str]) -> None:
        self.payload, self.env = payload, env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.proc is not None:
            return
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamrl.producers.rewards.sandbox", env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            self._send(self.payload)
            kind, value = await asyncio.wait_for(self._receive(), STARTUP_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as error:
            code = await self.stop(kill=True)
            raise RewardSandboxError(f"a reward worker process did not start ({error!r}, exit "
                                     f"code {code}); its stderr says why") from None
        if kind != "ready":
            await self.stop(kill=True)
            raise RewardSandboxError(f"the reward cannot be loaded in a worker process: {value}")

    async def call(self, sample: RewardInput, timeout_s: float) -> tuple[str, Any]:
        """("ok", RewardOutput) | ("error", message) | ("timeout", None)."""
        await self.start()
        try:
            self._send(_ENCODE.encode(_Request.of(sample)))
            async with asyncio.timeout(timeout_s):  # no task per call, unlike wait_for
                return await self._receive()
        except TimeoutError:
            await self.stop(kill=True)
            return "timeout", None
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self.stop(kill=True)
            return "error", f"the reward worker process died (exit code {code})"
        except BaseException:  # cancelled mid-call: its reply must not answer the next call
            await self.stop(kill=True)
            raise

    def _send(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(_LENGTH.pack(len(data)) + data)

    async def _receive(self) -> tuple[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        (size,) = _LENGTH.unpack(await self.proc.stdout.readexactly(_LENGTH.size))
        reply = _REPLY.decode(await self.proc.stdout.readexactly(size))
        return reply.kind, reply.output if reply.kind == "ok" else reply.message

    async def stop(self, *, kill: bool = False) -> int | None:
        """End the process (EOF on its stdin, or SIGKILL) and return its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.returncode is None and kill:
            proc.kill()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            return await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            return await proc.wait()


def _checked(out: object) -> RewardOutput:
    """The function's output as plain floats, or TypeError/ValueError saying what is wrong."""
    if not isinstance(out, RewardOutput):
        raise TypeError(f"the reward function returned {type(out).__name__}, expected "
                        "RewardOutput")
    reward = float(out.reward)
    details = {str(k): float(v) for k, v in out.details.items()}
    if not math.isfinite(reward) or not all(math.isfinite(v) for v in details.values()):
        raise ValueError(f"the reward function returned a non-finite reward or detail "
                         f"(reward {reward}, details {details})")
    tokens = None if out.token_rewards is None else tuple(float(v) for v in out.token_rewards)
    if tokens is not None and not all(math.isfinite(v) for v in tokens):
        raise ValueError("the reward function returned a non-finite token reward")
    return RewardOutput(reward=reward, details=details, status=str(out.status),
                        token_rewards=tokens)


def _read(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None  # the producer closed the pipe: stop
    (size,) = _LENGTH.unpack(head)
    return stream.read(size)


def _write(stream: IO[bytes], reply: _Reply) -> None:
    data = _ENCODE.encode(reply)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the producer dies, even in the middle of a hung call
    (EOF on stdin stops an idle worker anywhere, but a hung one never reads it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    # The producer died before the prctl: nobody will read our replies. Compared with the pid it
    # gave us, not with 1: in a container the producer itself is pid 1.
    if os.getppid() != int(os.environ.get(PARENT_ENV, os.getppid())):
        os._exit(0)


def main() -> None:
    """The worker: load the function, then answer one call after another until EOF."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the producer's to handle
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a reward's print() goes to stderr, never into the replies
    sys.stdout = sys.stderr
    try:
        setup = msgspec.msgpack.decode(_read(requests) or b"", type=_Setup)
        fn = setup.recipe.build() if setup.recipe is not None else pickle.loads(setup.function)
    except Exception as error:
        _write(replies, _Reply("failed", message=f"{type(error).__name__}: {error}"))
        return
    _write(replies, _Reply("ready"))
    while (frame := _read(requests)) is not None:
        sample = _REQUEST.decode(frame).sample()
        try:
            reply = _Reply("ok", output=_checked(fn(sample)))
        except Exception as error:
            reply = _Reply("error", message=f"{type(error).__name__}: {error}"[:1000])
        _write(replies, reply)
    with contextlib.suppress(OSError):
        replies.close()


if __name__ == "__main__":
    main()
