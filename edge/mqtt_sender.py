"""The outbox's sender: publishes the store's queued messages to the MQTT broker, oldest first, at QoS 1, and
marks each sent only when the broker has acknowledged it (paho-mqtt).

The outbox is the only queue: after a broker outage, a lost connection or a restart of the device, sending
resumes at the oldest unacknowledged message, so a message may arrive twice (receivers drop repeated ids)
but none is lost and their order is kept. Each connection is a new paho client, so that paho's own
in-memory queue never sends a message the outbox does not know about. The retained status topic says
"online" on connecting, and the broker publishes the last will "offline" when the device drops away.

MQTT 5, so that the broker's acknowledgement says whether it took the message: one its access list refuses
("Not authorized") stays in the outbox, and the status says why, instead of counting as sent. When the store
cannot mark what was acknowledged (a full disk), sending goes on from the last acknowledged message and the
marks are written when the disk allows.
"""
from __future__ import annotations

import sqlite3
import ssl
import sys
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from leukoscreen.edge.mqtt_messages import MqttConfig, status_message
from leukoscreen.edge.result_store import ResultStore

BATCH = 50                # messages in flight at once
ACK_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
RETRY_MAX_S = 30.0
SHORT_CONNECTION_S = 10.0  # three connections in a row lost sooner: another client with the same id


class Refused(Exception):
    """The broker acknowledged a message without taking it (its access list, a quota)."""


@dataclass
class SenderState:
    connected: bool = False
    last_error: str = ""
    sent: int = 0          # acknowledged since the start


class MqttSender:
    def __init__(self, config: MqttConfig, device: str, store: ResultStore, bundle: str = ""):
        self.config, self.device, self.store, self.bundle = config, device, store, bundle
        self.status_topic = config.topic(device, "status")
        self.state = SenderState()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._client: mqtt.Client | None = None
        self._lost = threading.Event()  # set by paho's thread when the connection drops
        self._taken_over = threading.Event()  # ... because another client connected with this device's id
        self._status_due = threading.Event()  # the bundle changed: publish the status again
        self._acked_through = 0       # the last message the broker acknowledged, in this process
        self._unmarked: list[int] = []  # acknowledged but not yet marked in the store (a full disk)
        self._reasons: dict[int, mqtt.ReasonCode] = {}  # the broker's answer per message id (paho's thread)
        self._stuck, self._stuck_id, self._stuck_bytes = 0, 0, 0  # times the oldest message went unacknowledged
        self._connected_at = 0.0
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A capture was stored: send its messages now."""
        self._wake.set()

    def set_bundle(self, bundle: str) -> None:
        """A new deciding bundle was loaded: the retained status says so."""
        self.bundle = bundle
        self._status_due.set()
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop sending; a connected device says "offline" on its status topic first."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the connection ----------------------------------------------------------------------------------
    def _connect(self) -> mqtt.Client:
        host, port, tls = self.config.address()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"leukoscreen-{self.device}",
                             protocol=mqtt.MQTTv5)
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.password or None)
        if tls:
            client.tls_set(ca_certs=self.config.ca_file or None, certfile=self.config.cert_file or None,
                           keyfile=self.config.key_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.max_inflight_messages_set(BATCH)  # a whole batch in flight (paho's default is 20)
        client.will_set(self.status_topic, status_message(self.device, "offline"), qos=1, retain=True)
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(client, userdata, flags, reason, properties):
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        client.on_connect = on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = lambda client, userdata, mid, reason, properties: self._reasons.__setitem__(mid, reason)
        self._lost.clear()
        client.connect(host, port, self.config.keepalive_s, clean_start=True)  # OSError when nothing listens
        client.loop_start()
        if not connected.wait(CONNECT_TIMEOUT_S) or refused:
            self._close(client)
            raise ConnectionError(f"the broker {self.config.broker} refused the connection ({refused[0]})" if refused
                                  else f"no answer from the broker {self.config.broker}")
        self._status_due.set()  # "online", published by the loop
        return client

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:  # paho's thread
        if reason == "Session taken over":
            self._taken_over.set()
        self._lost.set()
        self._wake.set()

    @staticmethod
    def _close(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()

    def _drop(self, reason: str) -> None:
        if self._client is not None:
            self._close(self._client)
            self._client = None
        if self.state.connected or reason != self.state.last_error:
            print(f"MQTT: {reason}; the results wait in the outbox and are sent when the broker is back",
                  file=sys.stderr)
        self.state.connected, self.state.last_error = False, reason

    # --- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay, short = 1.0, 0
        while not self._stopping.is_set():
            if self._client is None:
                try:
                    self._client = self._connect()
                except Exception as error:  # OSError, refusals, TLS, and a host name that cannot be encoded:
                    self._drop(f"{type(error).__name__}: {error}")  # the thread goes on, saying why
                    self._stopping.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.state.connected, self._connected_at = True, time.monotonic()
                if short < 2:  # a connection that keeps dropping keeps its back-off
                    delay = 1.0
                print(f"MQTT: connected to {self.config.broker}; sending the outbox", file=sys.stderr)
            if self._status_due.is_set():
                self._status_due.clear()
                self._client.publish(self.status_topic, status_message(self.device, "online", self.bundle), qos=1,
                                     retain=True)
            try:
                sent_all = self._send_batch()
            except sqlite3.Error as error:  # the store could not be read: try again later
                self.state.last_error = f"outbox: {error}"
                self._stopping.wait(RETRY_MAX_S)
                continue
            except Refused as refusal:  # kept in the outbox, in order; tried again later
                if str(refusal) != self.state.last_error:
                    print(f"MQTT: {refusal}", file=sys.stderr)
                self.state.last_error = str(refusal)
                self._stopping.wait(RETRY_MAX_S)
                continue
            if not self._lost.is_set() and sent_all:
                self._wake.wait(RETRY_MAX_S)
                self._wake.clear()
            if self._lost.is_set():
                short = short + 1 if time.monotonic() - self._connected_at < SHORT_CONNECTION_S else 0
                refusal = next((reason for reason in self._reasons.values() if reason.is_failure), None)
                self._reasons.clear()
                if refusal is not None:  # Mosquitto closes the connection after refusing a publish
                    self._drop(f"the broker refused a message ({refusal}) and closed the connection; the messages "
                               "stay in the outbox: let this device's user publish to its topics (the broker's "
                               "access list)")
                    self._stopping.wait(RETRY_MAX_S)
                elif self._stuck >= 3:
                    self._drop(f"the broker closes the connection instead of taking the oldest message "
                               f"({self._stuck_bytes:,} bytes) every time: is it over the broker's message_size_limit? "
                               "(thumbnail = false makes results smaller); it stays in the outbox")
                    self._stopping.wait(RETRY_MAX_S)
                elif self._taken_over.is_set() or short >= 3:
                    self._taken_over.clear()
                    self._drop("the broker closes each connection soon after it opens: most often another device "
                               f"connects with this one's id (leukoscreen-{self.device}); give each device its own "
                               "device_id (or the broker refuses what it publishes: its access list, its "
                               "message_size_limit)")
                    self._stopping.wait(delay)  # not a tug of war with the other one
                    delay = min(delay * 2, RETRY_MAX_S)
                else:
                    self._drop("the connection to the broker was lost")
        if self._client is not None:
            try:
                self._client.publish(self.status_topic, status_message(self.device, "offline"), qos=1,
                                     retain=True).wait_for_publish(2.0)
            except (RuntimeError, ValueError):  # the connection is already gone: the broker sends the will
                pass
            self._close(self._client)

    def _send_batch(self) -> bool:
        """Publish the oldest queued messages and mark those the broker acknowledged, in order. True when
        the outbox is empty."""
        entries = self.store.outbox_pending(BATCH, after=self._acked_through)
        if not entries:
            self._mark()
            if time.monotonic() - self._connected_at >= SHORT_CONNECTION_S and \
                    not self.state.last_error.startswith("outbox:"):
                self.state.last_error = ""  # connected for a while, and nothing waits
            return True
        published = [(entry_id, topic, self._client.publish(topic, payload, qos=1))
                     for entry_id, topic, payload in entries]
        acknowledged, refused = [], None
        for entry_id, topic, info in published:
            try:
                info.wait_for_publish(ACK_TIMEOUT_S)
                if not info.is_published():
                    break
            except (RuntimeError, ValueError):  # not queued: the connection is gone
                break
            reason = self._reasons.pop(info.mid, None)
            if reason is not None and reason.is_failure:
                refused = Refused(f"the broker refused the message on {topic} ({reason}); it stays in the outbox: "
                                  "let this device's user publish to its topics (the broker's access list)")
                break
            acknowledged.append(entry_id)
        if not acknowledged and refused is None:  # the oldest message was not taken: the same one again?
            self._stuck = self._stuck + 1 if entries[0][0] == self._stuck_id else 1
            self._stuck_id, self._stuck_bytes = entries[0][0], len(entries[0][2].encode())
        elif acknowledged:  # the broker takes messages again: the last problem is over
            self._stuck = 0
            if not self.state.last_error.startswith("outbox:"):
                self.state.last_error = ""
        if acknowledged:
            self._acked_through = acknowledged[-1]
            self._unmarked += acknowledged
            self.state.sent += len(acknowledged)
        self._mark()
        if refused:  # a new connection, so that nothing published after it overtakes it
            self._close(self._client)
            self._client, self.state.connected = None, False
            raise refused
        if len(acknowledged) < len(published):
            self._lost.set()  # the rest is sent again on a new connection
        return False

    def _mark(self) -> None:
        """Write the acknowledgements to the store; when it cannot (a full disk), keep them and go on."""
        if not self._unmarked:
            return
        try:
            self.store.mark_sent(self._unmarked)
        except sqlite3.Error as error:
            self.state.last_error = f"outbox: acknowledged messages cannot be marked ({error}); they are sent " \
                                    "again after a restart"
            return
        self._unmarked = []
        if self.state.last_error.startswith("outbox:"):
            self.state.last_error = ""
