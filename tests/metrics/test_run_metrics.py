"""One tiny `streamrl run` with `[metrics]` and `[logging] wandb` on (offline): the trainer's and
the producer's Prometheus endpoints answer over real HTTP while it runs, W&B's offline run holds
the scalars the trainer recorded, and `streamrl top --once` on the finished run shows them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import TrainStep, decode_event
from streamrl.streams import RunStreams
from tests.helpers import REPO, TINY, cli_env, streamrl_here
from tests.metrics.wandb_files import offline_run_file, read_offline_run


def _free_base_port() -> int:
    """A port with its neighbour free a moment ago (the trainer takes it, producer 0 the next)."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def _scrape(url: str) -> dict[str, tuple[float, dict[str, str]]]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return {s.name: (s.value, s.labels) for f in text_string_to_metric_families(text)
            for s in f.samples}


class Scraper(threading.Thread):
    """Scrapes every endpoint the run folder records, every 0.1 s, keeping each one's newest
    answer (a component's endpoint ends with the component)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.stop = run_dir, threading.Event()
        self.newest: dict[str, dict[str, tuple[float, dict[str, str]]]] = {}

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for path in (self.run_dir / "metrics").glob("*.json"):
                try:
                    found = json.loads(path.read_text())
                    self.newest[found["component"]] = _scrape(found["url"])
                except (OSError, ValueError, KeyError):
                    continue


@pytest.mark.slow
def test_a_run_serves_prometheus_logs_wandb_and_shows_in_top(tmp_path: Path) -> None:
    base = _free_base_port()
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY.read_text() + f'\n[metrics]\nport = {base}\n'
                      '\n[logging]\nwandb = { project = "streamrl-tests", mode = "offline" }\n')
    run_id, log_url = f"tiny-{uuid.uuid4().hex[:8]}", str(tmp_path / "log")
    run_dir = tmp_path / "runs" / run_id
    scraper = Scraper(run_dir)
    scraper.start()
    out = subprocess.run(
        [sys.executable, "-m", "streamrl.cli", "run", str(recipe), "--log", log_url, "--run",
         run_id, "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True,
        timeout=600, env=cli_env(), cwd=REPO)
    scraper.stop.set()
    scraper.join()
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    assert f"W&B: run {run_id} of project streamrl-tests" in out.stdout

    trainer, producer = scraper.newest["trainer"], scraper.newest["producer-0"]
    labels = {"run": run_id, "component": "producer-0"}
    assert producer["streamrl_producer_queue_depth"][1] == labels
    assert 0.0 <= producer["streamrl_producer_kv_cache_usage"][0] <= 1.0
    assert producer["streamrl_producer_samples_published_total"][0] > 0
    assert producer["streamrl_producer_generated_tokens_total"][0] > 0
    assert "streamrl_trainer_consumer_lag_records" in trainer
    assert 1 <= trainer["streamrl_trainer_steps_total"][0] <= 3
    assert trainer["streamrl_trainer_step_seconds"][0] > 0

    async def steps() -> list[TrainStep]:
        async with open_log(log_url) as log:
            events = [decode_event(r.value, "events")
                      for r in await log.read_all(RunStreams(run_id).events)]
        return [e for e in events if isinstance(e, TrainStep)]

    recorded = aio.run(steps())
    wandb_run = read_offline_run(offline_run_file(run_dir, run_id))
    assert wandb_run["run_id"] == run_id and wandb_run["config"]["metrics"]["port"] == base
    logged = {row["version"]: row["train/reward_mean"] for row in wandb_run["history"]
              if "train/reward_mean" in row}
    assert logged == {s.version: s.metrics["reward_mean"] for s in recorded}

    code, text, err = streamrl_here("top", run_id, "--log", log_url, "--once")
    assert code == 0, err
    assert "version 3/3  (finished)" in text
    assert f"{recorded[-1].metrics['step_ms']:.0f} ms" in text
    assert "producer-0" in text and "metrics http://127.0.0.1" in text
    with pytest.raises(OSError):  # the endpoints ended with their processes
        _scrape(f"http://127.0.0.1:{base}/metrics")
