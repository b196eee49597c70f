"""The small screen: HD44780 character LCDs over I2C (RPLCD), or an emulated screen for development.

The daemon calls `show(state, detail)` with the same states whatever the screen: starting, ready,
capturing, retake, result, error. `screen_lines` does the wording and fitting once for every screen.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import cv2
import numpy as np

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


def open_display(config: DisplayConfig, echo: bool = False) -> Display:
    if config.kind == "hd44780":
        return HD44780Display(config)
    if config.kind == "emulated":
        return EmulatedDisplay(config.cols, config.rows, config.png, echo)
    return Display(config.cols, config.rows)
