"""The Grafana dashboard and the compose monitoring profile agree with the code: every metric a
panel queries is one a component exports (and each exported one is on a panel), the data source
the panels name is the one provisioned, Prometheus scrapes the port compose gives the components,
and `streamrl up` without the profile starts neither image."""

from __future__ import annotations

import json
import re

import yaml

from streamrl.metrics import BY_NAME
from tests.helpers import REPO

COMPOSE = REPO / "compose"
DASHBOARD = json.loads((COMPOSE / "grafana" / "dashboards" / "streamrl.json").read_text())


def _queries() -> list[str]:
    return [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]


def test_the_dashboard_queries_only_metrics_the_components_export_and_all_of_them() -> None:
    used = {name for expr in _queries() for name in re.findall(r"\bstreamrl_\w+", expr)}
    assert used - set(BY_NAME) == set(), "the dashboard queries metrics nobody exports"
    assert set(BY_NAME) - used == set(), "exported metrics missing from the dashboard"
    # counters are read as rates, never as raw totals
    for expr in _queries():
        for name in re.findall(r"\bstreamrl_\w+_total\b", expr):
            assert f"rate({name}" in expr, expr


def test_the_panels_use_the_provisioned_prometheus_and_the_run_variable() -> None:
    provisioned = yaml.safe_load(
        (COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = provisioned["datasources"]
    assert source["url"] == "http://prometheus:9090"
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all('run=~"$run"' in t["expr"] for t in panel["targets"]), panel["title"]
    [variable] = DASHBOARD["templating"]["list"]
    assert variable["name"] == "run"


def test_compose_scrapes_the_components_port_behind_the_monitoring_profile() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    port = services["trainer"]["environment"]["STREAMRL_METRICS_PORT"]
    assert services["producer"]["environment"]["STREAMRL_METRICS_PORT"] == port
    assert jobs["streamrl-trainer"]["static_configs"][0]["targets"] == [f"trainer:{port}"]
    [producers] = jobs["streamrl-producers"]["dns_sd_configs"]
    assert producers["names"] == ["producer"] and str(producers["port"]) == port
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]  # plain `up` pulls no image
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in re.findall(r"\./([\w/.-]+):", mounts):
        assert (COMPOSE / path).exists(), path
