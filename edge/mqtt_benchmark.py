"""`leukoscreen bench BUNDLE --mqtt URL`: how fast the outbox empties into a broker, and what it adds to a capture.

Each run uses fresh state folders and the device's own parts (the daemon with this bundle on generated
fields, its result store and its MQTT sender): N captures are stored, in turn, by a device without MQTT (the
baseline) and by one with MQTT whose sender is not yet running, so that their messages wait in the
outbox; then the sender starts and the time until the broker has acknowledged every message is taken.
Figures: records (captures) per second and messages per second through the outbox (a capture is two
messages, its result and its sample's summary), and the median time a capture spends being stored with and
without the outbox, measured in the same run. Topics are under `leukoscreen-bench/`, not the devices'.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from leukoscreen.edge.benchmark import save_json
from leukoscreen.edge.device_config import parse_config

PREFIX = "leukoscreen-bench"
DRAIN_TIMEOUT_S = 300.0


def _daemon(bundle: Path, state: Path, broker: str = ""):
    from leukoscreen.edge.daemon import Daemon
    values = {"bundle": str(bundle.resolve()), "state_dir": str(state), "min_free_mb": 0, "device_id": "bench",
              "display": {"kind": "none"}}
    if broker:
        values["mqtt"] = {"broker": broker, "topic_prefix": PREFIX}
    daemon = Daemon(parse_config(values))
    daemon.camera.connect()
    return daemon


def _store_ms(daemons: list, captures: int) -> list[list[float]]:
    """Each daemon's time to store each capture; the daemons take turns, so that both see the same machine."""
    timings = [[] for _ in daemons]
    for i in range(captures):
        for daemon, times in zip(daemons, timings):
            record = daemon.capture_once(f"B{i // 10}")
            if record.decision == "error":
                raise RuntimeError(f"a capture failed: {record.message}")
            times.append(record.timings_ms["store"])
    return timings


def _drain_s(daemon, expected: int) -> float:
    waiting, _ = daemon.store.outbox_state()
    if waiting != expected:
        raise RuntimeError(f"{waiting} messages in the outbox, {expected} expected")
    started = time.perf_counter()
    daemon.sender.start()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while daemon.store.outbox_state()[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the outbox did not empty within {DRAIN_TIMEOUT_S:g} s: "
                               f"{daemon.sender.state.last_error or 'no error reported'}")
        time.sleep(0.002)
    return time.perf_counter() - started


def benchmark_outbox(bundle: Path, broker: str, captures: int = 300, runs: int = 5, out: Path | None = None) -> dict:
    rows = []
    for run in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            plain, queued = _daemon(bundle, Path(folder) / "plain"), _daemon(bundle, Path(folder) / "mqtt", broker)
            try:
                plain_ms, queued_ms = _store_ms([plain, queued], captures)
                messages = 2 * captures
                seconds = _drain_s(queued, messages)
            finally:
                plain.close()
                queued.close()
        row = {"run": run + 1, "captures": captures, "messages": messages, "drain_s": seconds,
               "records_per_s": captures / seconds, "messages_per_s": messages / seconds,
               "store_ms_median": {"without_mqtt": statistics.median(plain_ms), "with_outbox": statistics.median(queued_ms)}}
        rows.append(row)
        print(f"run {run + 1}: {captures} records ({messages} messages) sent in {seconds:.2f} s: "
              f"{row['records_per_s']:.0f} records/s; storing a capture {row['store_ms_median']['with_outbox']:.2f} ms "
              f"with the outbox, {row['store_ms_median']['without_mqtt']:.2f} ms without", flush=True)
    summary = {"broker": broker, "bundle": str(bundle), "runs": rows,
               "median_records_per_s": statistics.median(r["records_per_s"] for r in rows),
               "median_messages_per_s": statistics.median(r["messages_per_s"] for r in rows),
               "median_store_ms": {key: statistics.median(r["store_ms_median"][key] for r in rows)
                                   for key in ("without_mqtt", "with_outbox")}}
    store = summary["median_store_ms"]
    print(f"outbox to {broker}: median {summary['median_records_per_s']:.0f} records/s "
          f"({summary['median_messages_per_s']:.0f} messages/s, QoS 1, acknowledged) over {runs} runs of {captures}; "
          f"storing a capture: median {store['with_outbox']:.2f} ms with the outbox vs {store['without_mqtt']:.2f} ms "
          f"without ({store['with_outbox'] / store['without_mqtt']:.2f}x)")
    save_json(out, "outbox.json", summary)
    return summary
