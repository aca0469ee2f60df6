"""Prometheus metrics on --metrics-port, scraped over real sockets from a real server (docs/observability.md)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import threading
import time

import pytest

from .conftest import FREE_THREADED, ROOT, free_port, run_cli

APP = "tests.apps.runtime_app:api"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse the text format: {(name, sorted labels): value}; every line must parse."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        reply = connection.getresponse()
        body = reply.read().decode()
        assert reply.status == 200, body
        assert reply.getheader("content-type").startswith("text/plain; version=0.0.4")
    finally:
        connection.close()
    samples = {}
    declared = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not Prometheus text format: {line!r}"
        name, labels, value = match.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in declared or base in declared, f"sample without a TYPE line: {line!r}"
        pairs = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels or "")))
        samples[(name, pairs)] = float(value)
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples, name: str, **labels: str) -> float:
    """Sum over every sample of `name` whose labels include `labels` (e.g. all loops)."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= set(pairs))


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def settled_connections(metrics_port: int) -> float:
    """Connections counted so far, once the fixture's readiness probe (a connection opened and closed at
    once, which the loop may accept a moment later) has been counted and closed."""

    def settled():
        samples = scrape(metrics_port)
        total = value(samples, "percore_connections_total", loop="0")
        return total >= 1 and value(samples, "percore_open_connections", loop="0") == 0 and total

    return wait_for(settled)


def test_requests_are_counted_by_status_class_with_a_latency_histogram(serve):
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--metrics-port", str(metrics_port), "--max-body-size", "100")
    connections_before = settled_connections(metrics_port)
    client = server.client()
    for _ in range(3):
        assert client.get("/where").status == 200
    assert client.get("/nowhere").status == 404
    assert client.get("/nowhere/either").status == 404
    assert client.get("/boom").status == 500
    assert client.get("/slow").status == 200
    client.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        # Refused on its declared length, before the body is sent.
        raw.sendall(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        assert raw.recv(1024).startswith(b"HTTP/1.1 413")

    samples = scrape(metrics_port)
    assert value(samples, "percore_requests_total", loop="0", status="2xx") == 4
    assert value(samples, "percore_requests_total", loop="0", status="4xx") == 3
    assert value(samples, "percore_requests_total", loop="0", status="5xx") == 1
    assert value(samples, "percore_requests_total", loop="0", status="3xx") == 0
    assert value(samples, "percore_request_duration_seconds_count", loop="0") == 8
    assert value(samples, "percore_request_duration_seconds_bucket", loop="0", le="+Inf") == 8
    # /slow sleeps 0.6 s: never in the 0.5 s bucket (the others normally are; a loaded machine may delay one).
    assert value(samples, "percore_request_duration_seconds_bucket", loop="0", le="0.5") <= 7
    assert value(samples, "percore_request_duration_seconds_sum", loop="0") >= 0.6
    assert value(samples, "percore_connections_total", loop="0") == connections_before + 2
    assert value(samples, "percore_loops") == 1
    assert value(samples, "process_resident_memory_bytes") > 10_000_000


def test_in_flight_requests_and_open_connections_are_gauges(serve):
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    connections_before = settled_connections(metrics_port)
    idle = [server.client() for _ in range(3)]
    for client in idle:
        assert client.get("/where").status == 200
    samples = scrape(metrics_port)
    assert value(samples, "percore_open_connections", loop="0") == 3
    assert value(samples, "percore_in_flight_requests", loop="0") == 0

    slow = threading.Thread(target=lambda: server.get("/slow"))
    slow.start()
    assert wait_for(lambda: value(scrape(metrics_port), "percore_in_flight_requests", loop="0") == 1)
    slow.join()
    assert value(scrape(metrics_port), "percore_in_flight_requests", loop="0") == 0

    for client in idle:
        client.close()
    assert wait_for(lambda: value(scrape(metrics_port), "percore_open_connections", loop="0") == 0)
    assert value(scrape(metrics_port), "percore_connections_total", loop="0") == connections_before + 4


def test_malformed_requests_count_as_connection_errors(serve):
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    assert wait_for(lambda: value(scrape(metrics_port), "percore_connection_errors_total", loop="0") == 1)
    assert server.get("/where").status == 200


@pytest.mark.parametrize("routing", ["round-robin", "local"])
def test_every_loop_reports_and_totals_add_up(serve, routing):
    metrics_port = free_port()
    server = serve(APP, "--loops", "2", "--routing", routing, "--metrics-port", str(metrics_port))
    for _ in range(10):
        assert server.get("/where").status == 200
    samples = scrape(metrics_port)
    assert total(samples, "percore_requests_total", status="2xx") == 10
    assert total(samples, "percore_request_duration_seconds_count") == 10
    for loop in ("0", "1"):
        assert value(samples, "percore_in_flight_requests", loop=loop) == 0
        assert value(samples, "percore_handoff_queue_depth", loop=loop) == 0
    assert value(samples, "percore_loops") == 2


def test_process_gauges_say_which_build_serves(serve):
    metrics_port = free_port()
    serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    samples = scrape(metrics_port)
    # The GIL stays off on 3.13t: percore's module declares it does not need it.
    assert value(samples, "percore_gil_enabled") == (0 if FREE_THREADED else 1)
    version = sys.version.split()[0]
    build = "free-threaded" if FREE_THREADED else "gil"
    info = [pairs for (name, pairs), v in samples.items() if name == "percore_info" and v == 1]
    assert len(info) == 1 and ("build", build) in info[0] and ("python", version) in info[0]


def test_metrics_port_serves_only_metrics(serve):
    metrics_port = free_port()
    serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    connection = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    connection.request("GET", "/where")
    reply = connection.getresponse()
    assert reply.status == 404 and b"/metrics" in reply.read()
    connection.request("POST", "/metrics", body=b"")
    reply = connection.getresponse()
    assert reply.status == 405
    reply.read()
    connection.close()


def test_a_busy_metrics_port_fails_the_start_clearly():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_cli("serve", APP, "--port", str(free_port()), "--metrics-port", str(busy), timeout=60)
    assert result.returncode == 1
    assert f"metrics port {busy} on 127.0.0.1 is already in use" in result.stderr


def test_metrics_host_puts_the_metrics_on_another_address_than_the_app(serve):
    """The app on 127.0.0.1, its metrics only on 127.0.0.2 (another loopback address, as an internal
    interface would be): nothing answers metrics where the app is public."""
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.2")
    assert server.get("/where").status == 200
    assert ("percore_loops", ()) in scrape(metrics_port, host="127.0.0.2")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", metrics_port), timeout=5).close()


def test_an_unusable_metrics_host_fails_the_start_clearly():
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding it fails.
    result = run_cli(
        "serve",
        APP,
        "--port",
        str(free_port()),
        "--metrics-port",
        "0",
        "--metrics-host",
        "192.0.2.1",
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot listen for metrics on 192.0.2.1" in result.stderr


def test_the_grafana_dashboard_only_queries_metrics_the_server_exports(serve):
    metrics_port = free_port()
    serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    exported = {name for name, _ in scrape(metrics_port)}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:percore|process)_[a-z_]+", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, (
        f"the dashboard queries metrics the server does not export: {queried - exported}"
    )
