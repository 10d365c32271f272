"""Bookkeeping of the cuda_ipc ring: which slot a new version goes to, which reader still reads
which slot, and how a reader learns that the slot it found was overwritten. Plain files on a
tmpfs, no CUDA, so every rule here is unit-tested on a CPU machine.

One ring per publisher instance lives in `<directory>/streamrl-<namespace>-ring-<id>/`:

    slot-<k>            "<generation>": the version bytes slot k holds (or is being filled with)
    hold-<pid>-<token>  "<slot> <generation>" while one reader copies out of that slot, else ""

The protocol (why a version never changes under a reader):
- publisher, to overwrite slot k: (1) bump `slot-<k>` to a new generation, (2) wait until no
  live reader holds slot k at an older generation, (3) fill the slot, (4) write the manifest
  naming (slot k, new generation).
- reader: (1) read the manifest's (slot, generation), (2) write its hold, (3) read `slot-<k>`:
  another generation means the slot was reused, so it drops the hold and the version is
  unavailable, (4) copy out, (5) clear the hold.
If the reader's step (3) saw the old generation, its hold was written before the publisher's
step (1), so the publisher's step (2) sees it and waits. Readers that died (their pid is gone)
never block anyone: their holds are removed. A publisher that waits longer than its timeout
raises, naming the reader that did not let go.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RING_NAME = re.compile(r"^streamrl-[A-Za-z0-9_-]+-ring-[0-9a-f]{8,32}$")
_HOLD = re.compile(r"^hold-(?P<pid>\d+)-(?P<token>[0-9a-f]{8,32})$")


class SlotOverwritten(Exception):
    """The slot a manifest names holds another generation now: that version is gone."""


class ReaderTimeout(Exception):
    """A reader kept holding a slot the publisher needs for longer than the timeout."""


@dataclass(frozen=True)
class Hold:
    """One reader copying out of one slot."""

    path: Path
    pid: int
    slot: int
    generation: int

    def __str__(self) -> str:
        return f"reader pid {self.pid} ({self.path.name}) on slot {self.slot} generation " \
               f"{self.generation}"


def choose_slot(oldest_first: Sequence[int], held: set[int]) -> int:
    """The slot for the next version: the least recently written one that no reader holds, or
    the least recently written one if every slot is held (the publisher then waits for it)."""
    if not oldest_first:
        raise ValueError("a ring needs at least one slot")
    for slot in oldest_first:
        if slot not in held:
            return slot
    return oldest_first[0]


def _write(path: str, text: str) -> None:
    """Replace `path` atomically: a concurrent reader sees the old text or the new, never half.
    Plain os calls on str paths: a reader does this on every load (its cost is the load's)."""
    tmp = f"{path}.tmp"  # each file has one writer
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 64).decode()
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Ring:
    """The ring directory of one publisher, seen by the publisher or by a reader."""

    def __init__(self, path: Path) -> None:
        if not RING_NAME.match(path.name):
            raise ValueError(f"{path.name!r} is not a ring directory name")
        self.path = path
        self._root = str(path)

    @classmethod
    def create(cls, directory: Path, namespace: str, slots: int) -> Ring:
        if slots < 1:
            raise ValueError(f"a cuda_ipc ring needs at least 1 slot, got {slots}")
        path = directory / f"streamrl-{namespace}-ring-{secrets.token_hex(8)}"
        path.mkdir(mode=0o700)
        ring = cls(path)
        for slot in range(slots):
            _write(ring._slot_file(slot), "0")
        return ring

    def _slot_file(self, slot: int) -> str:
        return f"{self._root}/slot-{slot}"

    def generation(self, slot: int) -> int:
        """The generation slot `slot` holds or is being filled with (missing ring: -1)."""
        try:
            return int(_read(self._slot_file(slot)))
        except FileNotFoundError:
            return -1

    # --- publisher ------------------------------------------------------------------------------
    def holds(self) -> list[Hold]:
        """The holds of live readers; holds of dead ones are removed."""
        out = []
        for entry in os.scandir(self.path):
            m = _HOLD.fullmatch(entry.name)
            if m is None:
                continue
            path, pid = Path(entry.path), int(m["pid"])
            try:
                text = path.read_text().split()
            except FileNotFoundError:
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            if len(text) == 2:
                out.append(Hold(path, pid, int(text[0]), int(text[1])))
        return out

    def begin_write(self, slot: int) -> int:
        """Step (1): the slot's new generation; from now on no reader can start on its old one."""
        generation = self.generation(slot) + 1
        _write(self._slot_file(slot), str(generation))
        return generation

    def wait_released(self, slot: int, generation: int, *, timeout_s: float,
                      poll_s: float = 0.0005) -> None:
        """Step (2): block until no live reader holds `slot` at a generation before
        `generation`; ReaderTimeout names the readers still holding it after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            blocking = [h for h in self.holds() if h.slot == slot and h.generation < generation]
            if not blocking:
                return
            if time.monotonic() >= deadline:
                raise ReaderTimeout(
                    f"{', '.join(map(str, blocking))} did not finish copying out of slot {slot} "
                    f"within {timeout_s:g} s; the reader must call done(locator) after copying "
                    "(or raise the transport's ack_timeout_s)")
            time.sleep(poll_s)
            poll_s = min(poll_s * 2, 0.01)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # --- reader ---------------------------------------------------------------------------------
    def hold(self, token: str, slot: int, generation: int) -> None:
        """Steps (2)-(3): claim (slot, generation) for `token`'s reader; SlotOverwritten (and no
        hold left behind) when the slot already moved on."""
        path = self.hold_file(token)
        try:
            _write(path, f"{slot} {generation}")
        except FileNotFoundError:  # the publisher closed and removed its ring
            raise SlotOverwritten(f"ring {self.path.name} is gone") from None
        current = self.generation(slot)
        if current != generation:
            self.release(token)
            raise SlotOverwritten(f"slot {slot} of {self.path.name} holds generation {current}, "
                                  f"not {generation}")

    def release(self, token: str) -> None:
        """Step (5): this reader is done with whatever it held."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.hold_file(token))

    def hold_file(self, token: str) -> str:
        return f"{self._root}/hold-{os.getpid()}-{token}"


def reader_token() -> str:
    return secrets.token_hex(8)
