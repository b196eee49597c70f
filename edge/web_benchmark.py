"""`leukoscreen bench BUNDLE --web FOLDER`: the running device under local HTTP load.

Starts `leukoscreen serve` in its own process (folder-replay camera, a temporary state directory, a free
port on 127.0.0.1), then: resident memory after start and after a short warm-up; many classifications
through `POST /api/classify` with the memory after them (growth target: under 10 MB per 1,000);
requests per second and median/p95 latency of the status and results endpoints under a bounded load
from a few client threads. Only the standard library is used on the client side. With `--mqtt URL` it runs
twice, without MQTT (the baseline) and with it (every result also sent to the broker through the outbox),
and prints the difference in memory.
"""
from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from leukoscreen.edge.benchmark import save_json

WARM_UP = 20
RSS_TARGET_MB, GROWTH_TARGET_MB = 120.0, 10.0  # the device process, after the classifications


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS, or one of its parts: RssAnon (the process's own memory) or RssFile (pages of mapped files,
    mostly the libraries' code: how many the kernel maps depends on its page cache, e.g. a library just
    written by pip is held in large folios and counts several times more than after it was read from disk)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found (this benchmark reads Linux's /proc)")


class Client:
    """One keep-alive connection; returns (status, seconds) per request."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
        started = time.perf_counter()
        self.connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        response = self.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started


def _load(port: int, path: str, requests: int, clients: int) -> dict:
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def worker(count: int) -> list[tuple[int, float]]:
        client = Client(port)
        return [client.request("GET", path) for _ in range(count)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [a for chunk in pool.map(worker, per_client) for a in chunk]
    wall = time.perf_counter() - started
    latencies = [seconds * 1e3 for status, seconds in answers if status == 200]
    return {"path": path, "requests": requests, "clients": clients, "ok": len(latencies),
            "requests_per_s": requests / wall, "median_ms": statistics.median(latencies),
            "p95_ms": float(np.percentile(latencies, 95))}


def benchmark_web(bundle: Path, folder: Path, classifications: int = 1000, requests: int = 500, clients: int = 4,
                  out: Path | None = None, xnnpack: bool = True, mqtt: str = "") -> dict:
    if not mqtt:
        return _benchmark_web(bundle, folder, classifications, requests, clients, out, xnnpack)
    print("baseline: the device without MQTT", flush=True)
    runs = {"without_mqtt": _benchmark_web(bundle, folder, classifications, requests, clients, None, xnnpack)}
    print(f"the device sending every result to {mqtt}", flush=True)
    runs["with_mqtt"] = _benchmark_web(bundle, folder, classifications, requests, clients, None, xnnpack, mqtt)
    after = {key: run["rss_mb"][f"after_{classifications}_classifications"] for key, run in runs.items()}
    outbox = runs["with_mqtt"]["outbox"]
    print(f"RSS after {classifications} classifications: {after['with_mqtt']:.1f} MB with MQTT, "
          f"{after['without_mqtt']:.1f} MB without ({after['with_mqtt'] - after['without_mqtt']:+.1f} MB); "
          f"outbox at the end: {outbox['waiting']} waiting, connected {outbox['connected']}")
    save_json(out, "web-mqtt.json", runs)
    return runs


def _benchmark_web(bundle: Path, folder: Path, classifications: int, requests: int, clients: int,
                   out: Path | None, xnnpack: bool, mqtt: str = "") -> dict:
    port = _free_port()
    with tempfile.TemporaryDirectory() as state:
        config = Path(state) / "config.toml"
        config.write_text(f'bundle = "{bundle.resolve()}"\nstate_dir = "{state}/data"\nmin_free_mb = 0\n'
                          f'port = {port}\nxnnpack = {str(xnnpack).lower()}\n'
                          f'[camera]\nkind = "folder"\nfolder = "{folder.resolve()}"\n[display]\nkind = "none"\n'
                          + (f'[mqtt]\nbroker = "{mqtt}"\ntopic_prefix = "leukoscreen-bench"\n' if mqtt else ''))
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "leukoscreen.cli", "serve", "--config", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            summary = _measure(process, port, started, classifications, requests, clients)
        finally:
            process.terminate()
            _, errors = process.communicate(timeout=30)
        if process.returncode not in (0, -15):
            raise RuntimeError(f"the device process failed: {errors.decode()[-2000:]}")
    _print(summary)
    save_json(out, "web.json", summary)
    return summary


def _measure(process: subprocess.Popen, port: int, started: float, classifications: int, requests: int,
             clients: int) -> dict:
    print(f"starting the device on port {port}...", flush=True)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the device did not start: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the device did not answer on /api/status within 120 s")
        try:
            if Client(port).request("GET", "/api/status")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    ready_s = time.perf_counter() - started
    rss_ready = _rss_mb(process.pid)
    client = Client(port)
    for _ in range(WARM_UP):
        client.request("POST", "/api/classify", b"{}")
    rss_warm = _rss_mb(process.pid)
    print(f"{classifications} classifications through POST /api/classify...", flush=True)
    timings, statuses = [], {}
    for i in range(classifications):
        status, seconds = client.request("POST", "/api/classify", json.dumps({"sample_id": f"B{i // 10}"}).encode())
        statuses[status] = statuses.get(status, 0) + 1
        timings.append(seconds * 1e3)
    rss_after = _rss_mb(process.pid)
    parts = {part: _rss_mb(process.pid, part) for part in ("RssAnon", "RssFile")}
    print(f"load: {requests} requests from {clients} clients per endpoint...", flush=True)
    loads = [_load(port, path, requests, clients) for path in ("/api/status", "/api/results", "/api/samples")]
    outbox = _outbox(port)
    return {"outbox": outbox, "ready_s": ready_s, "rss_mb": {"ready": rss_ready, f"after_{WARM_UP}_warm_up": rss_warm,
                                           f"after_{classifications}_classifications": rss_after,
                                           "growth_over_classifications": rss_after - rss_warm},
            "rss_parts_after_mb": {"anonymous": parts["RssAnon"], "mapped_files": parts["RssFile"]},
            "classify": {"n": classifications, "statuses": statuses, "median_ms": statistics.median(timings),
                         "p95_ms": float(np.percentile(timings, 95))},
            "load": loads}


def _outbox(port: int, wait_s: float = 60.0) -> dict | None:
    """The device's outbox once it has emptied (or after wait_s), None without MQTT."""
    deadline = time.monotonic() + wait_s
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/api/status")
        outbox = json.loads(connection.getresponse().read())["outbox"]
        if outbox is None or outbox["waiting"] == 0 or time.monotonic() > deadline:
            return outbox
        time.sleep(0.1)


def _print(summary: dict) -> None:
    rss = summary["rss_mb"]
    print(f"ready in {summary['ready_s']:.2f} s; RSS " + ", ".join(f"{k} {v:.1f} MB" for k, v in rss.items()))
    after = next(v for k, v in rss.items() if k.startswith("after_") and k.endswith("_classifications"))
    print(f"device memory target: at most {RSS_TARGET_MB:.0f} MB after the classifications ({after:.1f} MB: "
          f"{'met' if after <= RSS_TARGET_MB else 'MISSED'}), growth under {GROWTH_TARGET_MB:.0f} MB "
          f"({rss['growth_over_classifications']:.1f} MB: "
          f"{'met' if rss['growth_over_classifications'] < GROWTH_TARGET_MB else 'MISSED'})")
    parts = summary["rss_parts_after_mb"]
    print(f"  of which anonymous (the process's own memory) {parts['anonymous']:.1f} MB, mapped files (library code; "
          f"depends on the page cache) {parts['mapped_files']:.1f} MB")
    c = summary["classify"]
    print(f"POST /api/classify x{c['n']}: median {c['median_ms']:.1f} ms, p95 {c['p95_ms']:.1f} ms, "
          f"statuses {c['statuses']}")
    print(f"{'endpoint':<14}{'req/s':>8}{'median ms':>11}{'p95 ms':>9}{'ok':>6}")
    for row in summary["load"]:
        print(f"{row['path']:<14}{row['requests_per_s']:>8.0f}{row['median_ms']:>11.2f}{row['p95_ms']:>9.2f}"
              f"{row['ok']:>6}")
