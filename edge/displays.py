"""The small screen: HD44780 character LCDs over I2C (RPLCD), small graphic OLEDs (SSD1306, SH1106,
SSD1309, ...) over I2C or SPI (luma.oled), or an emulated screen for development.

The daemon calls `show(state, detail)` with the same states whatever the screen: starting, ready,
capturing, retake, result, error (`show_capture` picks the state of a capture's record). `screen_lines` does the wording and fitting once for every screen.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np

from leukoscreen.edge.capture_record import CaptureRecord
from leukoscreen.edge.device_config import DisplayConfig

STATES = ("starting", "ready", "capturing", "retake", "result", "error")
SHORT = {  # decision code -> what fits on a character LCD
    "no_blasts": "No blasts suggested",
    "indeterminate": "Indeterminate: retake/review",
    "possible_blasts": "Possible blasts: refer to haematologist",
}


def screen_lines(state: str, detail: str, cols: int, rows: int) -> list[str]:
    """Text for a cols x rows character screen. The last row always says research use only."""
    if state not in STATES:
        raise ValueError(f"unknown display state {state!r}")
    headline = {"starting": "LeukoScreen", "ready": "Ready: press btn", "capturing": "Capturing...",
                "retake": "Retake", "result": "", "error": "Error"}[state]
    body = SHORT.get(detail, detail)
    text = f"{headline} {body}".strip() if headline else body
    lines = textwrap.wrap(text, cols)[: rows - 1] or [""]
    lines += [""] * (rows - 1 - len(lines))
    lines.append("Research use only"[:cols])
    return [line.ljust(cols)[:cols] for line in lines]


class Display:
    def __init__(self, cols: int = 16, rows: int = 2):
        self.cols, self.rows = cols, rows
        self.lines: list[str] = [" " * cols] * rows

    def show(self, state: str, detail: str = "") -> None:
        self.lines = screen_lines(state, detail, self.cols, self.rows)
        self._draw()

    def show_capture(self, record: CaptureRecord) -> None:
        """A capture's outcome: the answer, the retake reason, or the error."""
        if record.decision == "error":
            self.show("error", record.message)
        elif record.decision == "retake":
            reasons = record.quality.reasons if record.quality else ()
            self.show("retake", reasons[0] if reasons else "unusable frame")
        else:
            self.show("result", record.decision)

    def _draw(self) -> None:
        pass

    def close(self) -> None:
        pass


class EmulatedDisplay(Display):
    """Keeps the text, prints it to the terminal when asked, and can draw it into a PNG."""

    def __init__(self, cols: int = 16, rows: int = 2, png: str = "", echo: bool = False):
        super().__init__(cols, rows)
        self.png, self.echo = png, echo

    def _draw(self) -> None:
        if self.echo:
            print("LCD | " + " | ".join(self.lines))
        if self.png:
            image = np.zeros((24 * self.rows + 16, 13 * self.cols + 16, 3), np.uint8)
            image[:] = (40, 160, 60)
            for row, line in enumerate(self.lines):
                cv2.putText(image, line, (8, 26 + 24 * row), cv2.FONT_HERSHEY_PLAIN, 1.2, (10, 30, 10), 1)
            cv2.imwrite(str(Path(self.png)), image)


class HD44780Display(Display):
    """HD44780 16x2 / 20x4 behind an I2C expander (PCF8574 or MCP23008), through RPLCD."""

    def __init__(self, config: DisplayConfig):
        super().__init__(config.cols, config.rows)
        try:
            from RPLCD.i2c import CharLCD
        except ImportError as error:
            raise RuntimeError("RPLCD is not installed: pip install RPLCD smbus2") from error
        self.lcd = CharLCD(config.i2c_expander, config.i2c_address, cols=config.cols, rows=config.rows)

    def _draw(self) -> None:
        self.lcd.home()
        for row, line in enumerate(self.lines):
            self.lcd.cursor_pos = (row, 0)
            self.lcd.write_string(line)

    def close(self) -> None:
        self.lcd.close(clear=False)


class LumaDisplay(Display):
    """A graphic OLED through luma (the same lines as the character LCD, drawn with luma's default font).
    Tests pass luma's own `dummy` device."""

    def __init__(self, config: DisplayConfig, device=None):
        super().__init__(config.cols, config.rows)
        self.device = device or self._open(config)

    @staticmethod
    def _open(config: DisplayConfig):
        try:
            from luma.core.error import Error as LumaError
            from luma.core.interface.serial import i2c, spi
            from luma.oled import device as oled
        except ImportError as error:
            raise RuntimeError("luma.oled is not installed: pip install luma.oled") from error
        driver = getattr(oled, config.driver, None)
        if driver is None:
            raise RuntimeError(f"display.driver = {config.driver!r} is not a luma.oled device (e.g. ssd1306, sh1106)")
        try:
            serial = i2c(port=1, address=config.i2c_address) if config.interface == "i2c" else spi(port=0, device=0)
            return driver(serial)
        except (LumaError, OSError) as error:
            raise RuntimeError(f"{config.driver} over {config.interface} not connected ({error})") from error

    def _draw(self) -> None:
        from luma.core.render import canvas
        line_height = self.device.height // self.rows
        with canvas(self.device) as draw:
            for row, line in enumerate(self.lines):
                draw.text((0, row * line_height), line.rstrip(), fill="white")

    def close(self) -> None:
        self.device.cleanup()


def open_display(config: DisplayConfig, echo: bool = False) -> Display:
    """The configured screen. A screen that is missing or does not answer never stops the device: it then
    runs without one (the web page still works) and says so."""
    try:
        if config.kind == "hd44780":
            return HD44780Display(config)
        if config.kind == "luma":
            return LumaDisplay(config)
    except (RuntimeError, OSError, ImportError, ValueError) as error:
        print(f"warning: display {config.kind} not available ({error}); running without it", file=sys.stderr)
        return Display(config.cols, config.rows)
    if config.kind == "emulated":
        return EmulatedDisplay(config.cols, config.rows, config.png, echo)
    return Display(config.cols, config.rows)
