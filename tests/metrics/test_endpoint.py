"""A component's Prometheus endpoint over real HTTP: what a scrape returns (names, labels,
values read live), the port each component takes from `[metrics]`, a port already taken."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamrl.metrics import PRODUCER, MetricsEndpoint, recorded_endpoints, serve_component
from streamrl.recipe.observability import MetricsSection


def scrape(url: str) -> dict[str, tuple[float, dict[str, str]]]:
    """name -> (value, labels) of every sample at `url`, as Prometheus parses the text."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {s.name: (s.value, s.labels) for family in text_string_to_metric_families(text)
            for s in family.samples}


def test_a_scrape_reads_the_component_live_with_run_and_component_labels() -> None:
    queue = [1, 2, 3]
    read = lambda: {"streamrl_producer_queue_depth": len(queue),  # noqa: E731
                    "streamrl_producer_samples_published_total": 40}
    with MetricsEndpoint(PRODUCER, read, {"run": "r1", "component": "producer-0"}) as endpoint:
        url = endpoint.start("127.0.0.1", 0)
        first = scrape(url)
        assert first["streamrl_producer_queue_depth"] == (3.0, {"run": "r1",
                                                                "component": "producer-0"})
        assert first["streamrl_producer_samples_published_total"][0] == 40.0  # a counter
        # a metric the component does not know (a remote engine's KV cache) is simply absent
        assert "streamrl_producer_kv_cache_usage" not in first
        queue.clear()
        assert scrape(url)["streamrl_producer_queue_depth"][0] == 0.0
    with pytest.raises(urllib.error.URLError):
        scrape(url)  # stopped: nothing listens any more


def test_each_component_takes_its_own_port_and_the_environment_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    section = MetricsSection(port=9400)
    assert section.address("trainer") == ("127.0.0.1", 9400)
    assert section.address("producer", 2) == ("127.0.0.1", 9403)
    assert MetricsSection().address("trainer") is None  # off unless asked for
    monkeypatch.setenv("STREAMRL_METRICS_PORT", "9555")
    monkeypatch.setenv("STREAMRL_METRICS_HOST", "0.0.0.0")
    assert MetricsSection().address("producer", 5) == ("0.0.0.0", 9555)
    with pytest.raises(ValueError, match=r"metrics\.port"):
        MetricsSection(port=80)


def test_a_taken_port_leaves_the_component_running_without_metrics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = serve_component(MetricsSection(port=port), "trainer", 0, run_id="r",
                                   run_dir=tmp_path, metrics=PRODUCER, read=dict)
    assert endpoint is None
    assert "not free" in capsys.readouterr().out
    assert recorded_endpoints(tmp_path) == {}


def test_a_started_endpoint_is_recorded_in_the_run_folder(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1] - 1
    endpoint = serve_component(MetricsSection(port=base), "producer", 0, run_id="r",
                               run_dir=tmp_path, metrics=PRODUCER, read=dict)
    assert endpoint is not None
    try:
        assert recorded_endpoints(tmp_path) == {"producer-0": endpoint.url}
        assert endpoint.url == f"http://127.0.0.1:{base + 1}/metrics"
        assert scrape(endpoint.url) == {}
    finally:
        endpoint.stop()
