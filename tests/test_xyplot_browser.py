"""The XYZ Plot section and the Reservation tab in a real headless browser (Debian chromium via
Playwright), on the built-in demo models: a helper row fills the X values, Run XYZ Plot shows a grid,
Reserve queues a plot that the Reservation tab lists and runs."""

from __future__ import annotations

import re

from browser import needs_browser, open_page, pick

pytestmark = needs_browser


def test_xyz_plot_and_reservations_in_the_browser(app_url):
    from playwright.sync_api import expect

    from supermerger.xyplot import ReservationQueue

    url, ctx = app_url
    with open_page(url) as page:
        pick(page, "supermerger_model_a", "demoA.safetensors")
        pick(page, "supermerger_model_b", "demoB.safetensors")
        page.get_by_text("XYZ Plot", exact=True).click()

        # helper row: pick two calcmodes, then write them into the X values
        page.get_by_text("Helpers: block IDs, calcmodes, checkpoints", exact=True).click()
        calc = page.locator("#supermerger_xyz_calcmodes")
        calc.get_by_label("normal", exact=True).check()
        calc.get_by_label("cosineA", exact=True).check()
        expect(page.locator("#supermerger_xyz_selected textarea")).to_have_value("normal,cosineA")
        pick(page, "supermerger_xyz_xtype", "calcmode")
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

        pick(page, "supermerger_xyz_xtype", "seed")
        xvalues.fill("1,2")
        page.locator("#supermerger_xyz_reserve").click()
        expect(status).to_have_value(re.compile(r"^Reserved: No\. 1 \(1 waiting\)"), timeout=30_000)
        assert [e.plot.x.values for e in ReservationQueue().list()] == ["1,2"]

        page.get_by_role("tab", name="Reservation").click()
        page.locator("#supermerger_queue_reload").click()
        table = page.locator("#supermerger_queue_table")
        expect(table).to_contain_text("waiting", timeout=30_000)
        # the number box starts empty: one click on Delete no longer wipes the queue (it defaulted to -1)
        expect(page.locator("#supermerger_queue_number input")).to_have_value(re.compile(r"^0?$"))
        page.locator("#supermerger_queue_delete").click()
        expect(page.locator("#supermerger_queue_status textarea")).to_have_value(
            re.compile(r"^Type the number"), timeout=30_000)
        assert len(ReservationQueue().list()) == 1
        page.locator("#supermerger_queue_start").click()
        expect(page.locator("#supermerger_queue_status textarea")).to_have_value(
            re.compile(r"Reservation 1: finished"), timeout=90_000)
        expect(table).to_contain_text("finished", timeout=10_000)
        expect(page.locator("#supermerger_queue_gallery img").first).to_be_visible(timeout=10_000)
        assert "Traceback" not in page.content()
