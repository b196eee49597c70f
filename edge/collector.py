"""`leukoscreen collect`: the region's collector. It subscribes to every device's topics on the broker, keeps
what they send in one database (collector_store) and serves a small page of devices, their last status and
their samples: what a regional reviewer opens. Research use only.

Its MQTT session is persistent (a fixed client id, clean_session false) and every message is acknowledged
only once it is in the database, so messages sent while the collector is down wait on the broker and none
is lost by a collector crash. When the database cannot take a message, the collector waits and reconnects,
and the broker sends the unacknowledged messages again.
"""
from __future__ import annotations

import html
import secrets
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.exc import SQLAlchemyError

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.collector_store import CollectorStore, MessageError
from leukoscreen.edge.mqtt_messages import (KINDS, TOPIC_PART, broker_address, check_password_encrypted,
                                            check_topic_part)
from leukoscreen.edge.validation import LOOPBACK_HOSTS, check_token
from leukoscreen.edge.web.access import AccessRule, LockedOut
from leukoscreen.edge.web.http_rules import HttpRules


class Collector:
    retry_s = 5.0  # wait after a database error before the broker is asked for the message again

    def __init__(self, broker: str, store: CollectorStore, prefix: str = "leukoscreen", username: str = "",
                 password: str = "", ca_file: str = "", client_id: str = "leukoscreen-collector"):
        self.host, self.port, tls = broker_address(broker)
        self.store, self.prefix = store, prefix
        self.received = self.stored = self.dropped = 0
        self.connected = threading.Event()
        self.was_connected = store.holds_results()  # a collector that kept results had a session before
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=False, manual_ack=True)
        if username:
            self.client.username_pw_set(username, password or None)
        if tls:
            self.client.tls_set(ca_certs=ca_file or None)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._failing = False
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)

    def start(self) -> None:
        """Connect in the background (and reconnect whenever the broker goes away)."""
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            print(f"collector: the broker refused the connection ({reason})", file=sys.stderr)
            return
        client.subscribe([(f"{self.prefix}/+/{kind}", 1) for kind in KINDS])
        if self.was_connected and not flags.session_present:
            print("collector: WARNING: the broker holds no session for this collector although it has collected "
                  "before: the broker did not keep this collector's session (or --client-id changed), and what the "
                  "devices sent while it was away is lost to the collector (the devices' outboxes counted it as "
                  "delivered). Make the broker keep sessions (Mosquitto: persistence true, in a folder it can "
                  "write)", file=sys.stderr)
        self._failing = False
        print(f"collector: connected to {self.host}:{self.port}"
              + (" (session resumed)" if flags.session_present else ""), file=sys.stderr)
        self.connected.set()
        self.was_connected = True

    def _on_connect_fail(self, client, userdata):
        if not self._failing:  # once until it connects: paho keeps trying, up to every 30 s
            print(f"collector: cannot reach the broker {self.host}:{self.port}; trying again", file=sys.stderr)
        self._failing = True

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        if self.connected.is_set():
            print(f"collector: lost the broker ({reason}); reconnecting", file=sys.stderr)
        self.connected.clear()

    def _on_message(self, client, userdata, message):
        self.received += 1
        parts = message.topic.split("/")
        try:
            if len(parts) != 3 or parts[2] not in KINDS or not TOPIC_PART.fullmatch(parts[1]):
                raise MessageError(f"message on {message.topic[:120]!r} dropped: not a device topic")
            if self.store.add(parts[1], parts[2], message.payload):
                self.stored += 1
        except MessageError as error:
            self.dropped += 1
            print(f"collector: {error}", file=sys.stderr)
        except SQLAlchemyError as error:  # not acknowledged: a new connection makes the broker send it again
            print(f"collector: the database did not take a message ({error}); retrying in {self.retry_s:g} s",
                  file=sys.stderr)
            time.sleep(self.retry_s)
            client.reconnect()
            return
        client.ack(message.mid, message.qos)


def _cell(value) -> str:
    return f"<td>{html.escape(str(value if value is not None else '-'))}</td>"


def collector_app(store: CollectorStore, collector: Collector | None = None, token: str = "",
                  host: str = "127.0.0.1") -> FastAPI:
    """The page and its JSON. With a token, every request must carry it as the password of HTTP basic
    authentication (any user name), which a browser asks for, and the API's documentation pages are off.
    Bound to a loopback address, only loopback Host names are answered (as on the device)."""
    basic = HTTPBasic(auto_error=False)
    throttle = AccessRule(token)  # its count of wrong tokens per client address (five a minute, as the device)

    def require_token(request: Request, credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if not token:
            return
        if credentials and throttle.locked(request):
            raise LockedOut()
        if not (credentials and secrets.compare_digest(credentials.password.encode(), token.encode())):
            if credentials:
                throttle.failed(request)
            raise HTTPException(401, "give the collector's token as the password", {"WWW-Authenticate": "Basic"})

    documents = {} if not token else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="LeukoScreen collector", description=RESEARCH_USE_NOTICE, dependencies=[Depends(require_token)],
                  **documents)
    app.add_middleware(HttpRules, loopback_only=host in LOOPBACK_HOSTS)

    @app.get("/api/devices", summary="Every device that sent something, with its last status")
    def device_list() -> dict:
        return {"devices": store.device_list(), "notice": RESEARCH_USE_NOTICE}

    @app.get("/api/samples", summary="Samples, newest first (one device's with device=)")
    def sample_list(device: str | None = None, limit: int = Query(500, ge=1, le=10_000)) -> dict:
        return {"samples": store.sample_list(device, limit), "notice": RESEARCH_USE_NOTICE}

    @app.get("/api/results", summary="The results of one sample of one device")
    def result_list(device: str, sample_id: str) -> dict:
        return {"results": store.result_list(device, sample_id), "notice": RESEARCH_USE_NOTICE}

    @app.get("/", response_class=HTMLResponse, summary="The page: devices and their samples")
    def page() -> str:
        device_rows = "".join(
            "<tr>" + "".join(_cell(v) for v in (d["device"], d["state"], d["status"].get("bundle"),
                                                 d["status"].get("software_version"), d["last_seen"], d["results"],
                                                 d["last_result"])) + "</tr>" for d in store.device_list())
        sample_rows = "".join(
            "<tr>" + "".join(_cell(v) for v in (s["device"], s["sample_id"], s["captures"], s["message"],
                                                 s["last_time"])) + "</tr>" for s in store.sample_list())
        broker = ("" if collector is None else
                  f"<p>Broker {html.escape(collector.host)}:{collector.port}: "
                  f"{'connected' if collector.connected.is_set() else 'not connected'}; "
                  f"{collector.stored} messages stored, {collector.dropped} dropped since the start.</p>")
        return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><meta http-equiv="refresh" content="30">
<title>LeukoScreen collector</title><style>body{{font-family:sans-serif;margin:1rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}}.notice{{font-weight:bold}}</style></head><body>
<h1>LeukoScreen collector</h1><p class="notice">{RESEARCH_USE_NOTICE} Screening aid only, not a diagnosis: a
"Possible blasts" sample is referred for haematologist review.</p>{broker}
<h2>Devices</h2><table><tr><th>Device</th><th>Status</th><th>Model bundle</th><th>Software</th><th>Last heard</th>
<th>Results</th><th>Last result</th></tr>{device_rows}</table>
<h2>Samples</h2><table><tr><th>Device</th><th>Sample</th><th>Fields</th><th>Answer</th><th>Last field</th></tr>
{sample_rows}</table></body></html>"""

    return app


def run_collector(broker: str, db: str, prefix: str, host: str, port: int, username: str = "", password: str = "",
                  ca_file: str = "", token: str = "", client_id: str = "leukoscreen-collector") -> None:
    """Collect until stopped (Ctrl+C or SIGTERM), serving the page on host:port."""
    import uvicorn

    if host not in LOOPBACK_HOSTS and not token:
        raise ValueError(f"--host {host} serves the page to the network: set LEUKOSCREEN_COLLECTOR_TOKEN too")
    if token:
        check_token(token, "LEUKOSCREEN_COLLECTOR_TOKEN")
    check_topic_part(prefix, "--prefix")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: give a port between 1 and 65535 (0: any free one)")
    check_password_encrypted(broker, password, "LEUKOSCREEN_MQTT_PASSWORD", "--broker")
    if ca_file and not Path(ca_file).is_file():
        raise ValueError(f"--ca-file {ca_file!r}: no such file")
    store = CollectorStore(db)
    collector = Collector(broker, store, prefix, username, password, ca_file, client_id)
    collector.start()
    print(f"LeukoScreen collector: {prefix}/+/(results|samples|status) on {broker} into {store.engine.url!r}; "
          f"page on http://{host}:{port}/. {RESEARCH_USE_NOTICE}", flush=True)
    try:
        uvicorn.run(collector_app(store, collector, token, host), host=host, port=port, log_level="warning")
    finally:
        collector.stop()
