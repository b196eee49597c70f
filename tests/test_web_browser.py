"""The device page end to end in a real headless Chromium (Debian's `chromium`, driven by playwright) against
the running device on a folder-replay camera: preview, Classify, the result with its boxes, upload, history,
a sample page, export, device status, a phone-sized screen, and the access-token login."""
from __future__ import annotations

import os
import shutil
import zipfile

import cv2
import pytest

from conftest import DEFAULT_TITLE, Device, write_manifest_values

CHROMIUM = os.environ.get("LEUKOSCREEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as root in a container, on a machine with no network beyond the local device.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: install it (Debian: apt install chromium) to run the browser tests")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, accept_downloads=True)  # a phone
    opened = context.new_page()
    errors = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], errors


def test_classify_result_history_export_in_a_browser(page, tmp_path):
    device = Device(tmp_path)
    try:
        page.goto(device.server.url + "/")
        assert "Research use only" in page.text_content("#notice")
        page.wait_for_function("document.querySelector('#preview').src.startsWith('blob:')")
        page.wait_for_function("Number(document.querySelector('#focus').textContent) > 0")

        page.fill("#sample-id", "B-1")
        page.click("#classify")
        page.wait_for_selector("#result:not([hidden])")
        stored = device.client.get("/api/results", params={"limit": 1}).json()["captures"][0]
        assert stored["sample_id"] == "B-1"
        cells = len(stored["result"]["cells"])
        assert cells >= 1
        page.wait_for_function(f"document.querySelectorAll('#result-boxes rect.cell-box').length === {cells}")
        assert page.text_content("#result-decision") == stored["message"]
        assert "Research use only" in stored["message"]
        assert DEFAULT_TITLE in page.text_content("#result-meta")
        assert page.text_content("#result-title") == "Latest result"
        # on a phone the result is far below the button: the page scrolls to it
        page.wait_for_function("(() => { const r = document.querySelector('#result').getBoundingClientRect(); "
                               "return r.top >= -1 && r.top < window.innerHeight / 2; })()")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits a phone

        upload = tmp_path / "upload.jpg"
        cv2.imwrite(str(upload), cv2.imread(str(tmp_path / "fields" / "field-1.png")))
        page.set_input_files("#upload-file", str(upload))
        page.click("#upload")
        page.wait_for_function("document.querySelector('#result-meta').textContent.includes('upload: upload.jpg')")

        page.click("#nav-history")
        page.click("#samples a:has-text('B-1')")
        page.wait_for_selector("#captures li:nth-child(2)")
        assert page.locator("#captures li").count() == 2
        with page.expect_download() as download_info:
            page.click(".export-sample[data-format='zip']")
        download = download_info.value
        assert download.suggested_filename.startswith("leukoscreen-B-1") and download.suggested_filename.endswith(".zip")
        saved = tmp_path / "export.zip"
        download.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            assert sum(name.startswith("images/") for name in archive.namelist()) == 2
            assert "Research use only" in archive.read("NOTICE.txt").decode()

        page.click("#captures li a >> nth=1")  # an older capture opens in the result panel
        page.wait_for_function(f"document.querySelector('#result-meta').textContent.includes('capture {stored['id']},')")
        assert page.text_content("#result-title") == f"Capture {stored['id']}"  # not "Latest result"

        page.click("#nav-status")
        page.wait_for_selector("#status dd[data-key='Model bundle']")
        assert "leukoscreen-default" in page.text_content("#status dd[data-key='Model bundle']")
        assert page.text_content("#status dd[data-key='Runtime']") == "litert"
        assert page.text_content("#status dd[data-key='Camera']").startswith("connected")
    finally:
        device.close()


def test_page_asks_for_the_access_token_once(browser, tmp_path):
    device = Device(tmp_path, access_token="open-sesame-42", host="0.0.0.0")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(device.server.url + "/")
        page.fill("input[name=token]", "wrong-token")
        page.click("button[type=submit]")
        assert "Wrong token" in page.text_content(".error")
        page.fill("input[name=token]", "open-sesame-42")
        page.click("button[type=submit]")
        page.wait_for_selector("#classify")
        page.click("#classify")
        page.wait_for_selector("#result:not([hidden])")
        cookie = next(c for c in context.cookies() if c["name"] == "leukoscreen_access")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "leukoscreen_access" not in page.evaluate("document.cookie")  # not readable by scripts
        page.reload()
        page.wait_for_selector("#classify")  # not asked again
    finally:
        context.close()
        device.close()


def test_boxes_are_coloured_by_each_cells_class(page, tmp_path):
    """With a bundle that reads single-cell crops, every box carries its cell's class and blast probability,
    and cells of different classes get different colours; a compared bundle's answer is shown beside it.
    (The shipped model relabelled as a cell model: this checks the page, not the model.)"""
    import json

    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    cell_bundle = tmp_path / "cell-bundle"
    shutil.copytree(DEFAULT_BUNDLE, cell_bundle)
    manifest = json.loads((cell_bundle / "manifest.json").read_text())
    manifest.pop("field_px", None)   # a field bundle's tile side: a cell bundle has none
    manifest["guard"]["threshold"] = 1e12   # a field model's guard finds every crop unfamiliar: pass them all here
    write_manifest_values(cell_bundle, manifest | {"input_kind": "cell", "cell": {"side_um": 24.0, "pixels": 64,
                                                                                 "effective_um_per_px": 0.47}})
    device = Device(tmp_path, bundle=str(cell_bundle), compare_bundles=[str(DEFAULT_BUNDLE)])
    try:
        page.goto(device.server.url + "/")
        page.click("#classify")
        page.wait_for_selector("#result:not([hidden]) rect.cell-box")
        cells = device.client.get("/api/results", params={"limit": 1}).json()["captures"][0]["result"]["cells"]
        boxes = page.evaluate("[...document.querySelectorAll('rect.cell-box')]"
                              ".map(r => [r.dataset.label, r.getAttribute('stroke')])")
        assert [label for label, _ in boxes] == [f"{c['predicted']} {round(100 * c['blast_score'])}%" for c in cells]
        colours = {}
        for cell, (_, colour) in zip(cells, boxes):
            colours.setdefault(cell["predicted"], set()).add(colour)
        assert all(len(c) == 1 for c in colours.values())  # one colour per class
        assert len(set.union(*colours.values())) == len(colours)  # and a different one for each class
        assert "coloured by each cell's class" in page.text_content("#result-legend")
        # the gallery: one crop per cell, most blast-like first, captioned like its box
        page.wait_for_selector("#result-gallery figure")
        captions = page.evaluate("[...document.querySelectorAll('#result-gallery figcaption')].map(f => f.textContent)")
        ranked = sorted(cells, key=lambda c: -c["blast_score"])
        assert captions == [f"{c['predicted']} {round(100 * c['blast_score'])}%" for c in ranked]
        assert "Pixel size" in page.text_content("#result-table")
        # the field model runs beside it and is shown, but does not decide
        assert page.is_visible("#result-compared")
        assert DEFAULT_TITLE in page.text_content("#result-compared-table")
    finally:
        device.close()
