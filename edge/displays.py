"""The small screen: HD44780 character LCDs over I2C (RPLCD), small graphic OLEDs (SSD1306, SH1106,
SSD1309, ...) over I2C or SPI (luma.oled), or an emulated screen for development.

The daemon calls `show(state, detail)` with the same states whatever the screen: starting, ready,
capturing, retake, result, error (`show_capture` picks the state of a capture's record). `screen_pages` holds the
wording, written for 16x2 and 20x4 screens, once for every screen.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from leukoscreen.edge.capture_record import CaptureRecord
from leukoscreen.edge.device_config import DisplayConfig

STATES = ("starting", "ready", "capturing", "retake", "result", "error")
PAGE_SECONDS = 3.0
# Fixed, deliberate texts per state: (16x2 lines, 20x4 lines). On 16x2 a second page says research use
# only (17 characters do not fit a 16-character line); on 20x4 the last line always does.
TEXTS = {
    "starting": (["LeukoScreen", "starting..."], ["LeukoScreen", "starting...", ""]),
    "ready": (["Ready: press", "the button"], ["Ready.", "Press the button", "to capture a field."]),
    "capturing": (["Capturing...", "please wait"], ["Capturing and", "screening the field,", "please wait."]),
    "no_blasts": (["No blasts", "suggested"], ["No blasts suggested", "", ""]),
    "indeterminate": (["Indeterminate:", "retake/review"], ["Indeterminate:", "retake or review", ""]),
    "possible_blasts": (["Possible blasts:", "refer for review"],
                        ["Possible blasts:", "refer for haemato-", "logist review"]),
    "unfamiliar": (["Not screened:", "unfamiliar image"], ["Not screened: unlike", "the images this", "model was made for"]),
}
RETAKE = {  # the quality gate's reason (its first words) -> (16x2, 20x4) second line
    "too dark": ("too dark", "too dark: check lamp"), "overexposed": ("too bright", "too bright: less light"),
    "out of focus": ("out of focus", "out of focus: refocus"), "no stained cells": ("no stain seen", "no stained cells"),
    "compressed image": ("too compressed", "compressed (JPEG)"), "too noisy": ("too noisy", "too noisy: more light"),
    "no white cells": ("no white cells", "no white cells here"), "unusable frame": ("unusable frame", "unusable frame"),
}
ERRORS = {  # a word of the error message -> (16x2, 20x4) lines
    "camera": (["Error: camera", "no frame"], ["Error: no frame", "from the camera;", "check it."]),
    "storage full": (["Storage full:", "export, free up"], ["Storage full:", "export results and", "free space."]),
    "model": (["Error: model", "see web page"], ["Error: the model", "bundle; see the", "web page."]),
}
RESEARCH_PAGE = ["Research use", "only"]
RESEARCH_LINE = "Research use only"


def _content(state: str, detail: str, large: bool) -> list[str]:
    pick = int(large)
    if state == "result":
        if detail not in TEXTS:
            raise ValueError(f"unknown result {detail!r}")
        return TEXTS[detail][pick]
    if state == "retake":
        reason = next((texts[pick] for words, texts in RETAKE.items() if detail.lower().startswith(words)),
                      detail[:20 if large else 16])
        return ["Retake the field:", reason, ""] if large else ["Retake:", reason]
    if state == "error":
        return next((texts[pick] for word, texts in ERRORS.items() if word in detail.lower()),
                    ["Error:", "see the web page", ""] if large else ["Error:", "see web page"])
    return TEXTS[state][pick]


def screen_pages(state: str, detail: str, cols: int, rows: int) -> list[list[str]]:
    """The pages of text for a cols x rows character screen (16x2 or 20x4), each line padded to cols. Every
    state ends on research use only: the last line of a 20x4 screen, a page of its own on 16x2."""
    if state not in STATES:
        raise ValueError(f"unknown display state {state!r}")
    if (cols, rows) not in ((16, 2), (20, 4)):
        raise ValueError(f"{cols}x{rows} screens are not supported (16x2 or 20x4)")
    large = rows == 4
    pages = [_content(state, detail, large) + [RESEARCH_LINE]] if large else [_content(state, detail, large),
                                                                             RESEARCH_PAGE]
    return [[line.ljust(cols)[:cols] for line in page] for page in pages]


class Display:
    flips_pages = False     # screens that show one page after another (a real LCD); others keep the first

    def __init__(self, cols: int = 16, rows: int = 2):
        self.cols, self.rows = cols, rows
        self.pages: list[list[str]] = [[" " * cols] * rows]
        self.lines = self.pages[0]
        self.lock = threading.Lock()
        self.flipper: threading.Thread | None = None

    def show(self, state: str, detail: str = "") -> None:
        with self.lock:
            self.pages = screen_pages(state, detail, self.cols, self.rows)
            self.lines = self.pages[0]
            self._draw()
        if self.flips_pages and len(self.pages) > 1 and self.flipper is None:
            self.flipper = threading.Thread(target=self._flip, name="display pages", daemon=True)
            self.flipper.start()

    def _flip(self) -> None:
        page = 0
        while True:
            time.sleep(PAGE_SECONDS)
            with self.lock:
                page = (page + 1) % len(self.pages)
                if self.lines != self.pages[page]:
                    self.lines = self.pages[page]
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
        if self.echo:  # every page, as a real 16x2 screen would show them one after another
            print("LCD | " + " || ".join(" | ".join(page) for page in self.pages))
        if self.png:
            image = np.zeros((24 * self.rows + 16, 13 * self.cols + 16, 3), np.uint8)
            image[:] = (40, 160, 60)
            for row, line in enumerate(self.lines):
                cv2.putText(image, line, (8, 26 + 24 * row), cv2.FONT_HERSHEY_PLAIN, 1.2, (10, 30, 10), 1)
            try:  # a picture that cannot be written is a warning, never a stop
                written = cv2.imwrite(str(Path(self.png)), image)
            except cv2.error:
                written = False
            if not written:
                print(f"warning: the screen picture {self.png} cannot be written (a .png file in a folder that "
                      "exists); the device runs on", file=sys.stderr)
                self.png = ""


class HD44780Display(Display):
    """HD44780 16x2 / 20x4 behind an I2C expander (PCF8574 or MCP23008), through RPLCD."""
    flips_pages = True

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
    flips_pages = True

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
