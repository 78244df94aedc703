"""Metrics: the text exposition read back by an independent parser, the
textfile written atomically, and the HTTP endpoint over a real socket."""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import gatewayd.metrics as metrics
from gatewayd.channel import ChannelStats
from gatewayd.errors import ConfigError
from gatewayd.metrics import (
    CONTENT_TYPE,
    GatewayMetrics,
    MetricsServer,
    Registry,
    write_textfile,
)
from gatewayd.thermal import ThermalDecision, ThermalReading
from gatewayd.workers import PoolStats, WorkerInfo

# ---- an independent reader of the text format 0.0.4 ----

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(\{{.*\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?\Z")
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}
_LABEL_ESCAPES = {"\\": "\\", "n": "\n", '"': '"'}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


def _unescape(text: str, table: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            assert text[i] != "\\", f"stray backslash in {text!r}"
            out.append(text[i])
            i += 1
    return "".join(out)


def _labels(text: str) -> dict[str, str]:
    """Label pairs, read character by character (values may hold , } = and quotes)."""
    assert text[0] == "{" and text[-1] == "}"
    body, labels, i = text[1:-1], {}, 0
    while i < len(body):
        m = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"").match(body, i)
        assert m, f"bad label at {body[i:]!r}"
        i = m.end()
        start = i
        while body[i] != '"':
            i += 2 if body[i] == "\\" else 1
        assert m.group(1) not in labels, "duplicate label"
        labels[m.group(1)] = _unescape(body[start:i], _LABEL_ESCAPES)
        i += 1
        if i < len(body):
            assert body[i] == ",", f"expected a comma at {body[i:]!r}"
            i += 1
    return labels


def _value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text), text
    return float(text)


def parse(text: str) -> dict[str, dict]:
    """Families by name: {"type", "help", "samples": [(name, labels, value)]}."""
    assert text.endswith("\n"), "the last line must end with a line feed"
    families: dict[str, dict] = {}
    owner: dict[str, str] = {}  # sample name -> family
    seen: set[tuple[str, tuple]] = set()
    current = None
    for line in text.split("\n")[:-1]:
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), name
                family = families.setdefault(name, {"type": None, "help": None, "samples": []})
                if parts[1] == "HELP":
                    assert family["help"] is None, f"second HELP for {name}"
                    family["help"] = _unescape(parts[3] if len(parts) > 3 else "",
                                               _HELP_ESCAPES)
                else:
                    assert family["type"] is None, f"second TYPE for {name}"
                    assert not family["samples"], f"TYPE after samples for {name}"
                    family["type"] = parts[3]
                    for suffix in _SUFFIXES[parts[3]]:
                        owner[name + suffix] = name
                current = name
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), _labels(m.group(2)) if m.group(2) else {}
        family = owner.get(name)
        assert family == current, f"{name} outside its family's block"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"duplicate series {key}"
        seen.add(key)
        families[family]["samples"].append((name, labels, _value(m.group(3))))
    for name, family in families.items():
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])
    return families


def _check_histogram(name: str, samples: list) -> None:
    series: dict[tuple, dict] = {}
    for sample, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        entry = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if sample.endswith("_bucket"):
            entry["buckets"].append((_value(labels["le"]), value))
        elif sample.endswith("_sum"):
            entry["sum"] = value
        else:
            entry["count"] = value
    for entry in series.values():
        bounds = [b for b, _ in entry["buckets"]]
        counts = [c for _, c in entry["buckets"]]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, f"{name}: buckets {bounds}"
        assert counts == sorted(counts), f"{name}: buckets not cumulative: {counts}"
        assert counts[-1] == entry["count"], f"{name}: +Inf bucket differs from _count"
        assert entry["sum"] is not None


def samples(families: dict, name: str) -> dict[tuple, float]:
    family = next(f for n, f in families.items()
                  if name == n or any(name == n + s for s in _SUFFIXES[f["type"]]))
    return {tuple(sorted(labels.items())): value
            for sample, labels, value in family["samples"] if sample == name}


# ---- the format ----


def test_counters_gauges_and_histograms_render_and_parse_back():
    r = Registry()
    requests = r.counter("app_requests_total", "Requests served.", ["code"])
    requests.inc(labels={"code": 200})
    requests.inc(2, {"code": 200})
    requests.inc(labels={"code": 404})
    temperature = r.gauge("app_temperature_celsius", "Temperature.")
    temperature.set(61.25)
    latency = r.histogram("app_latency_seconds", "Latency.", [0.1, 0.5, 1.0])
    for v in (0.05, 0.1, 0.3, 0.7, 2.0, 9.0):
        latency.observe(v)
    families = parse(r.render())
    assert list(families) == ["app_requests_total", "app_temperature_celsius",
                              "app_latency_seconds"]
    assert families["app_requests_total"]["type"] == "counter"
    assert families["app_requests_total"]["help"] == "Requests served."
    assert samples(families, "app_requests_total") == {(("code", "200"),): 3.0,
                                                       (("code", "404"),): 1.0}
    assert samples(families, "app_temperature_celsius") == {(): 61.25}
    buckets = samples(families, "app_latency_seconds_bucket")
    assert buckets == {(("le", "0.1"),): 2, (("le", "0.5"),): 3, (("le", "1"),): 4,
                       (("le", "+Inf"),): 6}
    assert samples(families, "app_latency_seconds_count") == {(): 6}
    assert samples(families, "app_latency_seconds_sum")[()] == pytest.approx(12.15)


def test_exact_text_of_a_small_registry():
    r = Registry()
    r.gauge("g", "A gauge.").set(1.5)
    h = r.histogram("h_seconds", "A histogram.", [1, 2], ["stage"])
    h.observe(2, {"stage": "x"})
    assert r.render() == (
        "# HELP g A gauge.\n"
        "# TYPE g gauge\n"
        "g 1.5\n"
        "# HELP h_seconds A histogram.\n"
        "# TYPE h_seconds histogram\n"
        'h_seconds_bucket{stage="x",le="1"} 0\n'
        'h_seconds_bucket{stage="x",le="2"} 1\n'
        'h_seconds_bucket{stage="x",le="+Inf"} 1\n'
        'h_seconds_sum{stage="x"} 2\n'
        'h_seconds_count{stage="x"} 1\n')


def test_label_values_and_help_are_escaped():
    r = Registry()
    g = r.gauge("escaped", 'Help with a \\ backslash,\na newline and "quotes".', ["path"])
    tricky = 'C:\\gps\\"north"\nline two, {x="y"} = é ∑'
    g.set(1, {"path": tricky})
    text = r.render()
    assert '# HELP escaped Help with a \\\\ backslash,\\na newline and "quotes".\n' in text
    assert 'path="C:\\\\gps\\\\\\"north\\"\\nline two, {x=\\"y\\"} = é ∑"' in text
    assert text.count("\n") == 3  # no raw newline leaked into a line
    families = parse(text)
    assert families["escaped"]["help"] == 'Help with a \\ backslash,\na newline and "quotes".'
    assert samples(families, "escaped") == {(("path", tricky),): 1.0}


def test_special_values():
    r = Registry()
    g = r.gauge("special", "Special values.", ["v"])
    for name, value in [("inf", math.inf), ("ninf", -math.inf), ("nan", math.nan),
                        ("big", 1e300), ("small", 1.5e-9), ("int", 3.0), ("neg", -2)]:
        g.set(value, {"v": name})
    values = samples(parse(r.render()), "special")
    assert values[(("v", "inf"),)] == math.inf and values[(("v", "ninf"),)] == -math.inf
    assert math.isnan(values[(("v", "nan"),)])
    assert values[(("v", "big"),)] == 1e300 and values[(("v", "small"),)] == 1.5e-9
    assert 'special{v="int"} 3\n' in r.render()


def test_histogram_buckets_are_cumulative_and_a_bound_is_inclusive():
    r = Registry()
    h = r.histogram("lat_seconds", "Latency.", [0.001, 0.01, 0.1, 1.0, 10.0])
    values = [0.0005, 0.001, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 11.0, 100.0]
    for v in values:
        h.observe(v)
    buckets = samples(parse(r.render()), "lat_seconds_bucket")
    by_le = {float(k[0][1].replace("+Inf", "inf")): v for k, v in buckets.items()}
    for bound, count in by_le.items():
        assert count == sum(1 for v in values if v <= bound)
    h.observe(math.nan)  # ignored rather than poisoning _sum
    assert samples(parse(r.render()), "lat_seconds_count") == {(): len(values)}


@pytest.mark.parametrize("name", ["", "1abc", "has-dash", "space name", "é"])
def test_invalid_metric_names_are_refused(name):
    with pytest.raises(ValueError):
        Registry().gauge(name, "x")


@pytest.mark.parametrize("label", ["", "1x", "__reserved", "a-b"])
def test_invalid_label_names_are_refused(label):
    with pytest.raises(ValueError):
        Registry().gauge("ok", "x", [label])


def test_clashing_registrations_are_refused():
    r = Registry()
    r.histogram("work_seconds", "x", [1])
    with pytest.raises(ValueError):
        r.gauge("work_seconds", "x")
    with pytest.raises(ValueError):
        r.gauge("work_seconds_count", "x")  # would collide with the histogram's samples
    with pytest.raises(ValueError):
        r.histogram("other", "x", [1], ["le"])
    with pytest.raises(ValueError):
        r.histogram("none", "x", [])


def test_wrong_labels_and_decreasing_counters_are_refused():
    r = Registry()
    c = r.counter("c_total", "x", ["a"])
    with pytest.raises(ValueError):
        c.inc()
    with pytest.raises(ValueError):
        c.inc(labels={"b": 1})
    with pytest.raises(ValueError):
        c.inc(-1, {"a": 1})
    c.set_total(5, {"a": 1})
    with pytest.raises(ValueError):
        c.set_total(4, {"a": 1})
    assert c.value({"a": 1}) == 5


def test_concurrent_updates_while_rendering():
    r = Registry()
    g = r.gauge("busy", "x", ["n"])
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            g.set(i, {"n": i % 500})
            if i % 7 == 0:
                g.remove({"n": (i // 7) % 500})
            i += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(200):
            parse(r.render())
    finally:
        stop.set()
        thread.join()


# ---- gatewayd's own families ----


def test_past_max_source_series_the_message_counters_count_new_sources_together():
    from gatewayd.metrics import MAX_SOURCE_SERIES, OTHER_SOURCES

    m = GatewayMetrics()
    for n in range(MAX_SOURCE_SERIES + 10):
        m.message_in(f"s{n}", "gps", 2)
        m.message_out(f"s{n}", "gps")
    m.message_in("s0", "lidar")  # a known source, another kind: its own series
    families = parse(m.registry.render())
    got_in = samples(families, "gatewayd_messages_in_total")
    got_out = samples(families, "gatewayd_messages_out_total")
    assert len(got_in) == MAX_SOURCE_SERIES + 2 and len(got_out) == MAX_SOURCE_SERIES + 1
    assert got_in[(("kind", "gps"), ("source", OTHER_SOURCES))] == 20
    assert got_out[(("kind", "gps"), ("source", OTHER_SOURCES))] == 10
    assert got_in[(("kind", "gps"), ("source", f"s{MAX_SOURCE_SERIES - 1}"))] == 2
    assert got_in[(("kind", "lidar"), ("source", "s0"))] == 1
    assert sum(got_in.values()) == 2 * (MAX_SOURCE_SERIES + 10) + 1

def test_gateway_metrics_cover_the_daemon_and_are_all_prefixed():
    m = GatewayMetrics()
    m.observe_channel("decoded", ChannelStats(capacity=500, depth=12, peak=480, sent=9000,
                                              received=8988, dropped=3))
    workers = (WorkerInfo(101, True, 10, 50_000, 60_000, 200_000),
               WorkerInfo(102, False, 9, 40_000, 41_000, 190_000))
    m.observe_pool(PoolStats(2, 2, 1, 19, 1, 2, 0, 0, 3, 0.2, workers))
    m.observe_thermal(ThermalReading(71.5, "cpu-thermal", 1_200_000, 1_800_000, False),
                      ThermalDecision(64, False, True, "hot", "warm"))
    m.set_source_state("serial0", "up")
    m.set_source_state("serial0", "down")
    m.message_in("serial0", "nmea", 10)
    m.message_out("serial0", "fix")
    m.dead_letter("bad_input")
    m.dead_letter("bad_input", 2)
    for seconds in (0.0008, 0.004, 0.2, 3.0, 12.0):
        m.observe_chunk(seconds)
    m.loop_lag.set(0.002)
    m.uptime.set(3600)
    families = parse(m.registry.render())
    assert all(name.startswith("gatewayd_") for name in families)
    assert samples(families, "gatewayd_queue_depth") == {(("queue", "decoded"),): 12}
    assert samples(families, "gatewayd_queue_dropped_total") == {(("queue", "decoded"),): 3}
    assert samples(families, "gatewayd_workers") == {(): 2}
    assert samples(families, "gatewayd_worker_restarts_total") == {(): 3}
    assert samples(families, "gatewayd_worker_rss_bytes") == {
        (("pid", "101"),): 50_000 * 1024, (("pid", "102"),): 40_000 * 1024}
    assert samples(families, "gatewayd_chunk_size") == {(): 64}
    assert samples(families, "gatewayd_temperature_celsius") == {(): 71.5}
    assert samples(families, "gatewayd_cpu_frequency_hertz") == {(): 1.2e9}
    assert samples(families, "gatewayd_thermal_state")[(("state", "hot"),)] == 1
    assert samples(families, "gatewayd_source_state") == {
        (("source", "serial0"), ("state", "down")): 1,
        (("source", "serial0"), ("state", "up")): 0}
    assert samples(families, "gatewayd_dead_letters_total") == {(("reason", "bad_input"),): 3}
    assert samples(families, "gatewayd_messages_in_total") == {
        (("kind", "nmea"), ("source", "serial0")): 10}
    buckets = samples(families, "gatewayd_chunk_duration_seconds_bucket")
    bounds = sorted(float(k[0][1].replace("+Inf", "inf")) for k in buckets)
    assert bounds[0] == 0.001 and bounds[-2] == 10.0
    assert samples(families, "gatewayd_chunk_duration_seconds_count") == {(): 5}


def test_a_replaced_worker_and_a_lost_sensor_leave_no_stale_series():
    m = GatewayMetrics()
    m.observe_pool(PoolStats(1, 1, 0, 0, 0, 0, 0, 0, 0, None,
                             (WorkerInfo(7, False, 0, 1, 1, 1),)))
    m.observe_pool(PoolStats(1, 1, 0, 0, 0, 1, 0, 0, 1, None,
                             (WorkerInfo(8, False, 0, 2, 2, 2),)))
    m.observe_thermal(ThermalReading(50.0, "cpu-thermal", None, None, False),
                      ThermalDecision(128, False, False, "normal", ""))
    m.observe_thermal(ThermalReading(None, None, None, None, False),
                      ThermalDecision(128, False, False, "normal", ""))
    families = parse(m.registry.render())
    assert samples(families, "gatewayd_worker_rss_bytes") == {(("pid", "8"),): 2048}
    assert samples(families, "gatewayd_temperature_celsius") == {}


# ---- the textfile ----


def test_the_textfile_is_complete_and_readable_by_another_user(tmp_path):
    m = GatewayMetrics()
    target = tmp_path / "gatewayd.prom"
    old = os.umask(0o077)
    try:
        write_textfile(m.registry, target)
    finally:
        os.umask(old)
    assert parse(target.read_text()) == parse(m.registry.render())
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["gatewayd.prom"]


def test_the_textfile_must_end_in_prom(tmp_path):
    with pytest.raises(ValueError, match=r"\.prom"):
        write_textfile(Registry(), tmp_path / "gatewayd.txt")


def test_a_reader_never_sees_a_partial_textfile(tmp_path):
    r = Registry()
    g = r.gauge("bulk", "Many series, so that a write takes several syscalls.", ["n"])
    for n in range(5000):
        g.set(n, {"n": f"series-{n:05d}"})
    r.gauge("zz_end_marker", "The last family.").set(1)
    target = tmp_path / "bulk.prom"
    stop = threading.Event()
    seen = {"missing": 0, "complete": 0}
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = target.read_text()
            except FileNotFoundError:
                seen["missing"] += 1
                continue
            if not text.endswith("zz_end_marker 1\n"):
                problems.append(f"partial file of {len(text)} characters")
            seen["complete"] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            g.set(i, {"n": "series-00000"})
            write_textfile(r, target)
    finally:
        stop.set()
        thread.join()
    assert not problems
    assert seen["complete"] > 0
    assert sorted(os.listdir(tmp_path)) == ["bulk.prom"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    r = Registry()
    r.gauge("v", "x").set(1)
    target = tmp_path / "v.prom"
    write_textfile(r, target)
    before = target.read_text()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics.os, "fsync", no_space)
    r.gauge("w", "y").set(2)
    with pytest.raises(OSError):
        write_textfile(r, target)
    assert target.read_text() == before
    assert os.listdir(tmp_path) == ["v.prom"]


# ---- the HTTP endpoint ----


async def _exchange(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if half_close:
        writer.write_eof()
    response = await asyncio.wait_for(reader.read(), 5)  # the server closes after answering
    writer.close()
    return response


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _registry() -> Registry:
    r = Registry()
    r.counter("served_total", "Things served.").inc(3)
    return r


def test_get_metrics_over_a_real_socket():
    async def main() -> None:
        async with MetricsServer(_registry(), port=0) as server:
            response = await _exchange(server.port, b"GET /metrics HTTP/1.1\r\n"
                                                     b"Host: localhost\r\n\r\n")
            head, _, body = response.partition(b"\r\n\r\n")
            assert _status(response) == 200
            assert f"Content-Type: {CONTENT_TYPE}".encode() in head
            assert f"Content-Length: {len(body)}".encode() in head
            assert b"Connection: close" in head
            assert samples(parse(body.decode()), "served_total") == {(): 3}
            # A query string is fine; HEAD gets the headers only.
            assert _status(await _exchange(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")) \
                == 200
            head_only = await _exchange(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert _status(head_only) == 200 and head_only.endswith(b"\r\n\r\n")

    asyncio.run(main())


def test_a_standard_http_client_reads_the_endpoint():
    async def main() -> None:
        async with MetricsServer(_registry(), "localhost", port=0) as server:
            # Where localhost is also ::1 (Debian's /etc/hosts), port 0 gives
            # each address its own port: the client tries each address too.
            url = f"http://localhost:{server.port}/metrics"

            def fetch() -> tuple[str, str]:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.headers["Content-Type"], response.read().decode()

            content_type, body = await asyncio.to_thread(fetch)
            assert content_type == CONTENT_TYPE
            assert "served_total 3" in body

            def missing() -> int:
                try:
                    urllib.request.urlopen(url.replace("/metrics", "/"), timeout=5)
                except urllib.error.HTTPError as exc:
                    return exc.code
                return 200

            assert await asyncio.to_thread(missing) == 404

    asyncio.run(main())


def test_other_paths_are_404_and_other_methods_405():
    async def main() -> None:
        async with MetricsServer(_registry(), port=0) as server:
            assert _status(await _exchange(server.port, b"GET / HTTP/1.1\r\n\r\n")) == 404
            assert _status(await _exchange(server.port,
                                           b"GET /metrics/x HTTP/1.1\r\n\r\n")) == 404
            response = await _exchange(server.port, b"POST /metrics HTTP/1.1\r\n"
                                                     b"Content-Length: 3\r\n\r\nabc")
            assert _status(response) == 405
            assert b"Allow: GET, HEAD" in response

    asyncio.run(main())


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /metrics\r\n\r\n",
    b"GET /metrics SPDY/9\r\n\r\n",
    b"\r\n\r\n",
    b"GET /metrics HTTP/1.1\n\n",
])
def test_garbage_requests_get_an_error_and_the_server_keeps_serving(garbage):
    async def main() -> None:
        async with MetricsServer(_registry(), port=0) as server:
            response = await _exchange(server.port, garbage, half_close=True)
            assert response == b"" or _status(response) in (200, 400)
            ok = await _exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert _status(ok) == 200

    asyncio.run(main())


def test_oversized_slow_and_vanishing_clients_do_not_hurt_the_server():
    async def main() -> None:
        async with MetricsServer(_registry(), port=0, max_request_bytes=1024,
                                 timeout_s=0.3) as server:
            huge = b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n"
            try:
                response = await _exchange(server.port, huge)
            except ConnectionResetError:
                response = b"HTTP/1.1 431 reset"
            assert _status(response) == 431
            # A client that sends half a request and waits is cut off.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metr")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            # One that connects and leaves at once.
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()
            await asyncio.sleep(0.05)
            assert _status(await _exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")) \
                == 200
            assert server.bad_requests >= 2

    asyncio.run(main())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gateway.example", ""])
def test_a_non_loopback_address_is_refused(host):
    with pytest.raises(ConfigError, match="loopback"):
        MetricsServer(Registry(), host, port=0)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_addresses_are_accepted(host):
    MetricsServer(Registry(), host, port=0)


def test_allow_remote_lifts_the_refusal():
    MetricsServer(Registry(), "0.0.0.0", port=0, allow_remote=True)


def test_close_is_idempotent_and_the_port_is_released():
    async def main() -> None:
        server = MetricsServer(_registry(), port=0)
        await server.start()
        port = server.port
        await server.close()
        await server.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


def test_textfile_and_endpoint_serve_the_same_exposition(tmp_path: Path):
    m = GatewayMetrics()
    m.dead_letter("too_large")

    async def main() -> bytes:
        async with MetricsServer(m.registry, port=0) as server:
            return await _exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")

    body = asyncio.run(main()).partition(b"\r\n\r\n")[2]
    write_textfile(m.registry, tmp_path / "g.prom")
    assert (tmp_path / "g.prom").read_bytes() == body
