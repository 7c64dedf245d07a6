"""Prometheus /metrics: what a demo run shows, route templates, the token, the dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.registry.helpers import create_group, register, unique
from tests.support.registry_proc import RegistryProcess

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
DEMO_NODES = 3

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a two-worker registry after a short real demo and two bad requests."""
    folder = tmp_path_factory.mktemp("metrics")
    with RegistryProcess(folder / "registry", workers=2) as reg:
        args = ["--registry-url", reg.url, "--nodes", str(DEMO_NODES), "--rounds", "2"]
        args += ["--samples-per-node", "120", "--no-local-only", "--no-viz"]
        args += ["--output", str(folder / "out")]
        demo = subprocess.run(
            [sys.executable, str(ROOT / "demo.py"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert demo.returncode == 0, demo.stderr[-3000:]
        with httpx.Client(base_url=reg.url, timeout=10) as c:
            assert c.get("/groups/987654").status_code == 404
            assert c.post("/groups", json={}).status_code in (401, 422)
            yield c.get("/metrics").text


def test_metrics_after_a_demo_run_show_its_requests_joins_and_nodes(after_demo: str) -> None:
    samples = _samples(after_demo)
    requests = "mycelium_registry_requests_total"
    registered = _value(samples, requests, route="/nodes/register", status="201")
    heartbeats = _value(samples, requests, route="/nodes/{node_id}/heartbeat", status="200")
    nodes = sum(
        v for (n, _), v in samples.items() if n == "mycelium_registry_nodes"
    )  # every status
    assert registered == DEMO_NODES  # summed over both workers
    assert heartbeats >= DEMO_NODES
    assert _value(samples, "mycelium_registry_joins_total") >= DEMO_NODES
    assert nodes == DEMO_NODES
    assert _value(samples, "mycelium_registry_groups", state="active") >= 1
    uploaded = _value(samples, "mycelium_registry_snapshot_uploaded_bytes_total")
    assert 0 < _value(samples, "mycelium_registry_snapshot_stored_bytes") <= uploaded
    assert _value(samples, "mycelium_registry_ledger_payouts_total") >= 1
    assert _value(samples, "mycelium_registry_rejected_inputs_total", reason="404") >= 1
    assert _value(samples, "mycelium_registry_leader") == 1
    latency = _value(
        samples,
        "mycelium_registry_request_duration_seconds_count",
        route="/nodes/{node_id}/heartbeat",
    )
    assert latency == heartbeats
    # Raw paths never become labels: every route label is a template or <unmatched>
    routes = {dict(ls).get("route") for (n, ls), _ in samples.items() if n == requests}
    assert not [r for r in routes if r and re.search(r"/node-\d|/\d", r)], routes


# PromQL words that are not metric names.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        rest = expr[match.end() :].lstrip()
        if not rest.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x=~"4.."}[5m]))) / b'
    assert metric_names(expr) == {"a_bucket", "b"}


def test_every_dashboard_panel_queries_only_metrics_the_registry_exports(
    after_demo: str,
) -> None:
    # Prepare: the names a real scrape exports, and the dashboard's queries
    exported = {name for name, _ in _samples(after_demo)}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in dashboard["panels"]}

    # Execute
    used = {title: set().union(*map(metric_names, e)) for title, e in exprs.items()}

    # Assert: importable shape, every panel has queries, and each names exported metrics
    assert dashboard["schemaVersion"] >= 30
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])
    assert all(used.values()), used
    unknown = {t: sorted(n - exported) for t, n in used.items() if n - exported}
    assert not unknown, unknown


TOKEN = "scrape-me-please"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of a one-worker registry started with `--metrics-token`."""
    folder = tmp_path_factory.mktemp("token")
    with (
        RegistryProcess(folder, extra=["--metrics-token", TOKEN]) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as client,
    ):
        yield client


def test_the_metrics_token_guards_metrics_when_set(app_client: httpx.Client) -> None:
    anonymous = app_client.get("/metrics")
    wrong = app_client.get("/metrics", headers={"Authorization": "Bearer not-the-one"})
    right = app_client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert anonymous.status_code == 401 and "metrics token" in anonymous.json()["detail"]
    assert wrong.status_code == 403
    assert right.status_code == 200 and right.headers["content-type"].startswith("text/plain")


def test_fast_routes_and_unknown_paths_are_labelled_by_template(app_client: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def scrape() -> Samples:
        return _samples(app_client.get("/metrics", headers=auth).text)

    node_id, headers = register(app_client)
    group_id = create_group(app_client, headers)
    before = scrape()

    # Execute: heartbeats (served ahead of FastAPI's routing), unknown paths, a 422, a 404
    for _ in range(3):
        assert app_client.post(f"/nodes/{node_id}/heartbeat", headers=headers).status_code == 200
    for _ in range(5):
        assert app_client.get(f"/no/such/{unique()}").status_code == 404
    assert app_client.post("/groups/join", headers=headers, json={"group_id": "x"}).status_code
    assert app_client.get(f"/groups/{group_id + 1000}").status_code == 404
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # Assert
    requests = "mycelium_registry_requests_total"
    assert delta(requests, route="/nodes/{node_id}/heartbeat", status="200") == 3
    assert delta(requests, route="<unmatched>", status="404") == 5
    assert delta(requests, route="/groups/{group_id}", status="404") == 1
    assert delta("mycelium_registry_rejected_inputs_total", reason="422") == 1
    assert delta("mycelium_registry_rejected_inputs_total", reason="404") == 6
    assert not [ls for (n, ls) in after if n == requests and "no/such" in dict(ls).get("route", "")]


def test_a_too_short_metrics_token_is_named_without_echoing_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "registry", "--data-dir", str(tmp_path), "--metrics-token", "abc12"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "metrics_token: String should have at least 8 characters" in done.stderr
    assert "abc12" not in done.stderr and "Traceback" not in done.stderr
