"""A component's Prometheus endpoint: `/metrics` over HTTP on a daemon thread, its values read
from the live component at scrape time (no sampling loop, no global registry).

    endpoint = MetricsEndpoint(names.PRODUCER, read=lambda: {"streamrl_producer_queue_depth": 3},
                               labels={"run": run_id, "component": "producer-0"})
    url = endpoint.start("127.0.0.1", 9401)      # "http://<host>:9401/metrics"; port 0: any free
    ...
    endpoint.stop()                              # idempotent; also `with endpoint: ...`

`read()` runs on the server's thread while the component runs on its own, so it only reads plain
attributes (ints, lengths). A name `read()` leaves out is not exported at that scrape (a metric the
component cannot know, e.g. KV-cache use of a remote engine); a name outside `metrics` is a bug.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Self

from streamrl.metrics.names import Metric as Spec
from streamrl.recipe.observability import MetricsSection

Reader = Callable[[], Mapping[str, float]]


class _Collector:  # prometheus_client's Collector interface: `collect()`
    def __init__(self, specs: Iterable[Spec], read: Reader, labels: Mapping[str, str]) -> None:
        self.specs = {s.name: s for s in specs}
        self.read, self.labels = read, dict(labels)

    def collect(self) -> Iterable[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = self.read()
        unknown = set(values) - set(self.specs)
        assert not unknown, f"metrics without a spec in streamrl/metrics/names.py: {unknown}"
        for name, value in values.items():
            spec = self.specs[name]
            family = (CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily)(
                name, spec.help, labels=list(self.labels))
            family.add_metric(list(self.labels.values()), float(value))
            yield family


class MetricsEndpoint:
    def __init__(self, metrics: Iterable[Spec], read: Reader, labels: Mapping[str, str]) -> None:
        # imported here: a run without [metrics] never needs prometheus_client
        from prometheus_client.registry import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(metrics, read, labels))
        self._server: object | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self, host: str, port: int) -> str:
        """Serve on (host, port); returns the URL to scrape. Raises OSError if the port is taken."""
        from prometheus_client.exposition import start_http_server

        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        self.url = f"http://{shown}:{server.server_port}/metrics"
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            assert self._thread is not None
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_component(section: MetricsSection, role: str, index: int, *, run_id: str,
                    run_dir: Path, metrics: Iterable[Spec], read: Reader
                    ) -> MetricsEndpoint | None:
    """Start component `role` `index`'s endpoint where `[metrics]` says (None when metrics are
    off), print its URL and record it in the run folder. A port already taken is reported and
    the component runs on without metrics: an endpoint is never worth a stopped run."""
    address = section.address(role, index)  # type: ignore[arg-type]
    if address is None:
        return None
    component = role if role == "trainer" else f"{role}-{index}"
    endpoint = MetricsEndpoint(metrics, read, labels={"run": run_id, "component": component})
    try:
        url = endpoint.start(*address)
    except OSError as error:
        print(f"{component}: no metrics endpoint, {address[0]}:{address[1]} is not free "
              f"({error}); set [metrics] port to another base port", flush=True)
        return None
    try:
        record_endpoint(run_dir, component, url)
    except OSError as error:  # the run folder is not writable here (another host): URL printed
        print(f"{component}: could not record {url} in {run_dir}: {error}", flush=True)
    print(f"{component}: Prometheus metrics at {url}", flush=True)
    return endpoint


def record_endpoint(run_dir: Path, component: str, url: str) -> Path:
    """`runs/<run>/metrics/<component>.json`: where `streamrl top` and users find the endpoint
    (every component writes its own file, so concurrent starts never race)."""
    path = run_dir / "metrics" / f"{component}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"component": component, "url": url, "pid": os.getpid(),
                               "host": socket.gethostname()}) + "\n")
    tmp.replace(path)
    return path


def recorded_endpoints(run_dir: Path) -> dict[str, str]:
    """component -> URL, as the run's components recorded them (empty when metrics are off)."""
    found = {}
    for path in sorted((run_dir / "metrics").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            found[data["component"]] = data["url"]
        except (OSError, ValueError, KeyError):
            continue  # a file being replaced, or not ours
    return found
