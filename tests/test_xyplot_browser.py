"""The XYZ Plot section and the Reservation tab in a real headless browser (Debian chromium via
Playwright), on the built-in demo models: a helper row fills the X values, Run XYZ Plot shows a grid,
Reserve queues a plot that the Reservation tab lists and runs."""

from __future__ import annotations

import re
import time

import pytest

from test_ui_browser import _chromium, _pick, _skip_reason, app_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def test_xyz_plot_and_reservations_in_the_browser(app_url):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from supermerger.xyplot import ReservationQueue

    url, ctx = app_url
    t0 = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("#supermerger_merge_gen")
            _pick(page, "supermerger_model_a", "demoA.safetensors")
            _pick(page, "supermerger_model_b", "demoB.safetensors")
            page.get_by_text("XYZ Plot", exact=True).click()

            # helper row: pick two calcmodes, then write them into the X values
            page.get_by_text("Helpers: block IDs, calcmodes, checkpoints", exact=True).click()
            calc = page.locator("#supermerger_xyz_calcmodes")
            calc.get_by_label("normal", exact=True).check()
            calc.get_by_label("cosineA", exact=True).check()
            expect(page.locator("#supermerger_xyz_selected textarea")).to_have_value("normal,cosineA")
            _pick(page, "supermerger_xyz_xtype", "calcmode")
            page.locator("#supermerger_xyz_to_x").click()
            xvalues = page.locator("#supermerger_xyz_xvalues textarea")
            expect(xvalues).to_have_value("normal,cosineA")

            page.locator("#supermerger_xyz_run").click()
            status = page.locator("#supermerger_xyz_status textarea")
            expect(status).to_have_value(re.compile(r"^XYZ plot done: 2 of 2 cells"), timeout=90_000)
            expect(page.locator("#supermerger_gallery img").first).to_be_visible(timeout=10_000)

            # a malformed value: one readable line, no traceback
            xvalues.fill("normal,cosineQ")
            page.locator("#supermerger_xyz_run").click()
            expect(status).to_have_value(re.compile(r"^Error: X axis \(calcmode\), item 2 \('cosineQ'\)"),
                                         timeout=30_000)

            _pick(page, "supermerger_xyz_xtype", "seed")
            xvalues.fill("1,2")
            page.locator("#supermerger_xyz_reserve").click()
            expect(status).to_have_value(re.compile(r"^Reserved: No\. 1 \(1 waiting\)"), timeout=30_000)
            assert [e.plot.x.values for e in ReservationQueue().list()] == ["1,2"]

            page.get_by_role("tab", name="Reservation").click()
            page.locator("#supermerger_queue_reload").click()
            table = page.locator("#supermerger_queue_table")
            expect(table).to_contain_text("waiting", timeout=30_000)
            page.locator("#supermerger_queue_start").click()
            expect(page.locator("#supermerger_queue_status textarea")).to_have_value(
                re.compile(r"Reservation 1: finished"), timeout=90_000)
            expect(table).to_contain_text("finished", timeout=10_000)
            expect(page.locator("#supermerger_queue_gallery img").first).to_be_visible(timeout=10_000)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    assert time.perf_counter() - t0 < 180
