"""Capture triggers: a hardware button (gpiozero on a Pi, Jetson.GPIO on a Jetson) or the keyboard.

Each calls `on_press()` when pressed; the daemon decides what a press during a running classification
does. (The web page's button calls the daemon directly.) Tests use gpiozero's own mock pin factory.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from leukoscreen.edge.device_config import ButtonConfig


class Trigger:
    def close(self) -> None:
        pass


class GpiozeroButton(Trigger):
    def __init__(self, config: ButtonConfig, on_press: Callable[[], None], pin_factory=None):
        try:
            from gpiozero import Button
        except ImportError as error:
            raise RuntimeError("gpiozero is not installed: pip install gpiozero (and lgpio on a Pi 5)") from error
        self.button = Button(config.pin, pull_up=config.pull_up, bounce_time=config.debounce_s or None,
                             pin_factory=pin_factory)
        self.button.when_pressed = lambda *_: on_press()

    def close(self) -> None:
        self.button.close()


class JetsonButton(Trigger):
    def __init__(self, config: ButtonConfig, on_press: Callable[[], None]):
        try:
            import Jetson.GPIO as GPIO
        except ImportError as error:
            raise RuntimeError("Jetson.GPIO is not installed: pip install Jetson.GPIO") from error
        self.gpio, self.pin = GPIO, config.pin
        GPIO.setmode(GPIO.BOARD)
        GPIO.setup(config.pin, GPIO.IN)
        edge = GPIO.FALLING if config.pull_up else GPIO.RISING
        GPIO.add_event_detect(config.pin, edge, callback=lambda _: on_press(),
                              bouncetime=max(1, int(config.debounce_s * 1000)))

    def close(self) -> None:
        self.gpio.cleanup(self.pin)


class KeyboardTrigger(Trigger):
    """Enter in the terminal presses the button; 'q' then Enter stops the daemon."""

    def __init__(self, on_press: Callable[[], None], on_quit: Callable[[], None], stream=None):
        self.stream = stream or sys.stdin
        self.thread = threading.Thread(target=self._read, args=(on_press, on_quit), daemon=True)
        self.thread.start()

    def _read(self, on_press, on_quit) -> None:
        for line in self.stream:
            if line.strip().lower() == "q":
                on_quit()
                return
            on_press()


def open_trigger(config: ButtonConfig, on_press: Callable[[], None], on_quit: Callable[[], None]) -> Trigger:
    """The configured trigger. A button that is missing or cannot be set up never stops the device: it then
    runs without it (the web page and the keyboard still work) and says so."""
    if config.kind == "keyboard":
        return KeyboardTrigger(on_press, on_quit)
    try:
        if config.kind == "gpiozero":
            return GpiozeroButton(config, on_press)
        if config.kind == "jetson":
            return JetsonButton(config, on_press)
    except Exception as error:  # gpiozero and Jetson.GPIO raise their own kinds (no pin factory, no board)
        print(f"warning: button {config.kind} on pin {config.pin} not available ({error}); running without it: "
              "use the web page or the keyboard", file=sys.stderr)
    return Trigger()
