"""The outbox's sender: publishes the store's queued messages to the MQTT broker, oldest first, at QoS 1, and
marks each sent only when the broker has acknowledged it (paho-mqtt).

The outbox is the only queue: after a broker outage, a lost connection or a restart of the device, sending
resumes at the oldest unacknowledged message, so a message may arrive twice (receivers drop repeated ids)
but none is lost and their order is kept. Each connection is a new paho client, so that paho's own
in-memory queue never sends a message the outbox does not know about. The retained status topic says
"online" on connecting, and the broker publishes the last will "offline" when the device drops away.
"""
from __future__ import annotations

import sqlite3
import ssl
import sys
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from leukoscreen.edge.mqtt_messages import MqttConfig, status_message
from leukoscreen.edge.result_store import ResultStore

BATCH = 50                # messages in flight at once
ACK_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
RETRY_MAX_S = 30.0


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
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A capture was stored: send its messages now."""
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
                             protocol=mqtt.MQTTv311, clean_session=True)
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
        self._lost.clear()
        client.connect(host, port, self.config.keepalive_s)  # OSError when nothing listens
        client.loop_start()
        if not connected.wait(CONNECT_TIMEOUT_S) or refused:
            self._close(client)
            raise ConnectionError(f"the broker {self.config.broker} refused the connection ({refused[0]})" if refused
                                  else f"no answer from the broker {self.config.broker}")
        client.publish(self.status_topic, status_message(self.device, "online", self.bundle), qos=1, retain=True)
        return client

    def _on_disconnect(self, *_) -> None:  # paho's thread
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
        delay = 1.0
        while not self._stopping.is_set():
            if self._client is None:
                try:
                    self._client = self._connect()
                except (OSError, ConnectionError, ssl.SSLError) as error:
                    self._drop(str(error) or type(error).__name__)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.state.connected, self.state.last_error, delay = True, "", 1.0
            try:
                sent_all = self._send_batch()
            except sqlite3.Error as error:  # the store could not be read or marked (a full disk): try again later
                self.state.last_error = f"outbox: {error}"
                self._stopping.wait(RETRY_MAX_S)
                continue
            if not self._lost.is_set() and sent_all:
                self._wake.wait(RETRY_MAX_S)
                self._wake.clear()
            if self._lost.is_set():
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
        entries = self.store.outbox_pending(BATCH)
        if not entries:
            return True
        published = [(entry_id, self._client.publish(topic, payload, qos=1)) for entry_id, topic, payload in entries]
        acknowledged = []
        for entry_id, info in published:
            try:
                info.wait_for_publish(ACK_TIMEOUT_S)
                if not info.is_published():
                    break
            except (RuntimeError, ValueError):  # not queued: the connection is gone
                break
            acknowledged.append(entry_id)
        if acknowledged:
            self.store.mark_sent(acknowledged)
            self.state.sent += len(acknowledged)
        if len(acknowledged) < len(published):
            self._lost.set()  # the rest is sent again on a new connection
        return False
