"""Local mode: the trainer and each producer are child processes of the supervisor.

    python -m streamrl.consumers.trainer --log URL --run RUN
    python -m producers --log URL --run RUN --index I --num-producers N

`Prestarted` starts them before the run exists (`--await-run`: they import torch and their
modules while `streamrl run` checks the recipe, then wait for the run id on stdin,
streamrl/prestart.py); a `LocalLauncher` given them hands each its run id instead of spawning it,
and `close()` ends the ones the run did not use (SIGTERM: they have opened nothing).

A producer is stopped with SIGTERM (it finishes its decoding step, writes ProducerLeft and
exits). A child that dies (killed, crashed) is started again after RESTART_DELAY_S and resumes
from the log, as Ray restarts an actor; after MAX_RESTARTS restarts of one role the run ends with
an error naming it. A child that exits with `EXIT_REFUSED` (it refused its configuration, e.g. a
trainer whose worst step would not fit) ends the run at once: it would refuse again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from streamrl.launch.base import LaunchError, Member
from streamrl.launch.disaggregated import NVLINK_MULTICAST_OFF, RoleEnv
from streamrl.recipe.config import EXIT_REFUSED

STOP_TIMEOUT_S = 60.0
MAX_RESTARTS = 5  # per role and index, over the run: a crash loop still ends the run
RESTART_DELAY_S = 2.0  # lets a broker or a lock holder that took the child down come back


TRAINER, PRODUCERS = "streamrl.consumers.trainer", "streamrl.producers"


async def spawn(module: str, *args: str, extra_env: dict[str, str] | None = None,
                stdin: int | None = None) -> asyncio.subprocess.Process:
    """`python -m module args` with one torch thread: processes share the machine's cores."""
    env = {**os.environ, **NVLINK_MULTICAST_OFF, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           **(extra_env or {})}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", module, *args, env=env,
                                                stdin=stdin)


class Prestarted:
    """The trainer and producers 0..n-1 of a run not yet started, importing meanwhile; each
    waits for its run id (`--await-run`). Taken by a `LocalLauncher`, or ended by `close()`."""

    def __init__(self) -> None:
        self.trainer: asyncio.subprocess.Process | None = None
        self.producers: dict[tuple[int, int], asyncio.subprocess.Process] = {}  # (index, n)

    @classmethod
    async def start(cls, log_url: str, num_producers: int) -> Prestarted:
        self = cls()
        common = ("--log", log_url, "--await-run")
        self.trainer = await spawn(TRAINER, *common, stdin=asyncio.subprocess.PIPE)
        for index in range(num_producers):
            self.producers[(index, num_producers)] = await spawn(
                PRODUCERS, *common, "--index", str(index), "--num-producers",
                str(num_producers), stdin=asyncio.subprocess.PIPE)
        return self

    async def take_trainer(self, run_id: str) -> asyncio.subprocess.Process | None:
        proc, self.trainer = self.trainer, None
        return await _hand_run_id(proc, run_id) if proc is not None else None

    async def take_producer(self, index: int, num_producers: int,
                            run_id: str) -> asyncio.subprocess.Process | None:
        proc = self.producers.pop((index, num_producers), None)
        return await _hand_run_id(proc, run_id) if proc is not None else None

    async def close(self) -> None:
        """End every process not taken: none has opened the log yet."""
        procs = [p for p in (self.trainer, *self.producers.values()) if p is not None]
        self.trainer, self.producers = None, {}
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        await asyncio.gather(*(stop_process(p, timeout_s=10.0) for p in procs))


async def _hand_run_id(proc: asyncio.subprocess.Process,
                       run_id: str) -> asyncio.subprocess.Process | None:
    """The process, told its run id; None if it is gone (the caller spawns a fresh one)."""
    assert proc.stdin is not None, "a prestarted process reads its run id from stdin"
    try:
        proc.stdin.write(f"{run_id}\n".encode())
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        await stop_process(proc)
        return None
    return proc


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float = STOP_TIMEOUT_S,
                       sig: signal.Signals = signal.SIGTERM) -> None:
    """`sig`, then SIGKILL if it has not exited after `timeout_s`."""
    if proc.returncode is None:
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class LocalLauncher:
    kind = "local"

    def __init__(self, log_url: str, run_id: str, *, role_env: RoleEnv | None = None,
                 prestarted: Prestarted | None = None) -> None:
        self.run_id = run_id
        self.common = ("--log", log_url, "--run", run_id)
        self.role_env = role_env  # extra environment per process (disaggregated.py)
        assert prestarted is None or role_env is None, "a prestarted process has no role env"
        self.prestarted = prestarted  # used for the first start of each role, if still alive
        self.trainer: asyncio.subprocess.Process | None = None
        self.producers: dict[int, tuple[int, asyncio.subprocess.Process]] = {}  # index -> (n, p)
        self.restarts: dict[str, int] = {}

    async def start_trainer(self) -> None:
        if self.prestarted is not None:
            self.trainer = await self.prestarted.take_trainer(self.run_id)
            if self.trainer is not None:
                return
        self.trainer = await spawn(TRAINER, *self.common,
                                   extra_env=self.role_env("trainer", 0, 0) if self.role_env
                                   else None)

    async def start_producer(self, index: int, num_producers: int) -> None:
        assert index not in self.producers, f"producer {index} is already running"
        if self.prestarted is not None:
            proc = await self.prestarted.take_producer(index, num_producers, self.run_id)
            if proc is not None:
                self.producers[index] = (num_producers, proc)
                return
        proc = await spawn(PRODUCERS, *self.common, "--index", str(index),
                           "--num-producers", str(num_producers),
                           extra_env=self.role_env("producer", index, num_producers)
                           if self.role_env else None)
        self.producers[index] = (num_producers, proc)

    async def stop_producer(self, index: int) -> None:
        _, proc = self.producers.pop(index)
        await stop_process(proc, sig=signal.SIGUSR1)  # hand over: requeue unfinished prompts
        if proc.returncode not in (0, -signal.SIGUSR1):  # killed by it before it had started
            raise LaunchError(f"producer {index} exited with code {proc.returncode} while stopping")

    async def trainer_exit_code(self) -> int | None:
        assert self.trainer is not None, "start_trainer first"
        for index, (n, proc) in list(self.producers.items()):  # returncode: set once exited
            if proc.returncode not in (None, 0):
                self._count_restart(f"producer {index}", proc.returncode)
                del self.producers[index]
                await asyncio.sleep(RESTART_DELAY_S)
                await self.start_producer(index, n)
        if self.trainer.returncode not in (None, 0):
            self._count_restart("trainer", self.trainer.returncode)
            await asyncio.sleep(RESTART_DELAY_S)
            await self.start_trainer()  # resumes from the log: nothing trained twice
        return self.trainer.returncode

    def _count_restart(self, who: str, code: int) -> None:
        if code == EXIT_REFUSED:
            raise LaunchError(f"{who} refused its configuration (exit {code}; its message is "
                              "above): not restarting it")
        self.restarts[who] = self.restarts.get(who, 0) + 1
        if self.restarts[who] > MAX_RESTARTS:
            raise LaunchError(f"{who} exited with code {code} (restarted {MAX_RESTARTS} times)")
        print(f"{who} exited with code {code}; restarting it", file=sys.stderr)

    async def members(self) -> list[Member]:
        host = socket.gethostname()
        out = []
        if self.trainer is not None:
            out.append(Member(role="trainer", pid=self.trainer.pid, host=host,
                              status=_status(self.trainer),
                              restarts=self.restarts.get("trainer", 0)))
        for index, (n, proc) in sorted(self.producers.items()):
            out.append(Member(role="producer", index=index, num_producers=n, pid=proc.pid,
                              host=host, status=_status(proc),
                              restarts=self.restarts.get(f"producer {index}", 0)))
        return out

    async def close(self) -> None:
        if self.prestarted is not None:
            await self.prestarted.close()
        procs = [p for _, p in self.producers.values()]
        if self.trainer is not None:
            procs.append(self.trainer)
        await asyncio.gather(*(stop_process(p) for p in procs))


def _status(proc: asyncio.subprocess.Process) -> str:
    return "running" if proc.returncode is None else f"exited({proc.returncode})"
