"""The commands a user types: `streamrl demo`, `tail` and `inspect`, as real subprocesses, on the
file log and on the local Kafka broker."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

from tests import helpers


def streamrl(*args: str, log: str) -> subprocess.CompletedProcess[str]:
    return helpers.streamrl(*args, "--log", log, timeout=240)


def test_demo_then_inspect_and_tail_show_the_run(log_url: str) -> None:
    run = f"demo-{uuid.uuid4().hex[:8]}"
    demo = streamrl("demo", "--run", run, "--prompts", "24", log=log_url)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "96 samples in 24 batches, 1 undecodable" in demo.stdout
    assert "each sample in at most one batch" in demo.stdout
    # the damaged half reads as a bad message or as an early end of stream, by the run id's length
    assert re.search(r"dead letters: 1 from demo-trainer \((malformed_ipc|batch_count)\)",
                     demo.stdout), demo.stdout[-2000:]

    inspect = streamrl("inspect", run, log=log_url)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    assert "96 samples from 2 producers" in inspect.stdout

    tail = streamrl("tail", f"{run}.trajectories", "--from", "0", log=log_url)
    assert tail.returncode == 0, tail.stderr[-3000:]
    assert tail.stdout.count("trajectory") >= 96
    assert "REJECTED" in tail.stdout
    assert "malformed_ipc" in tail.stdout or "batch_count" in tail.stdout

    events = streamrl("tail", f"{run}.events", "--last", "5", log=log_url)
    assert "train_step" in events.stdout and "producer_left" in events.stdout


def test_the_demo_refuses_to_write_into_an_existing_run(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    assert streamrl("demo", "--run", "again", "--prompts", "8", log=log).returncode == 0
    second = streamrl("demo", "--run", "again", "--prompts", "8", log=log)
    assert second.returncode == 2 and "run 'again' already exists" in second.stderr
    inspect = streamrl("inspect", "again", log=log)
    assert "32 samples from 2 producers" in inspect.stdout  # the first run, untouched


def test_bad_names_get_clear_errors(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    bad = streamrl("tail", "no-kind-here", log=log)
    assert bad.returncode != 0 and "<run_id>.<kind>" in bad.stderr
    missing = streamrl("inspect", "nosuchrun", log=log)
    assert missing.returncode == 1 and "no streams for run 'nosuchrun'" in missing.stdout
    scheme = streamrl("inspect", "x", log="ftp://nowhere")
    assert scheme.returncode != 0 and "unknown log URL" in scheme.stderr
