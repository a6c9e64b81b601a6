"""The dashboard's Gateways page in real headless Chromium: the live gateways, and a banner for
one that dropped data (its store writes failing). A screenshot goes to tests/artifacts/."""

from __future__ import annotations

import time

from gateway.registration import GATEWAYS_NAMESPACE
from gateway.runtime import default_store_url
from gateway.store import open_store
from tests.browser.chromium import ARTIFACTS, launch
from tests.support.inprocess import OTHER, in_process_mesh


def test_the_gateways_page_lists_the_live_data_plane(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    data_dir = tmp_path / "data"
    problems: list[str] = []
    with in_process_mesh(data_dir, {"MESHGATE_ACCESS_LOG": "off"}) as mesh:
        own = mesh.running.registration.identity.id
        store = open_store(default_store_url(str(data_dir)))
        try:
            store.put_records(GATEWAYS_NAMESPACE, {"other-gw": {**OTHER, "last_seen": time.time()}}, 60.0)
        finally:
            store.close()
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 700})
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.goto(f"{mesh.admin_url}/ui/#gateways")
                page.fill("#token", mesh.token)
                page.click("#signin-form button[type=submit]")
                rows = page.locator("table.gateways tbody tr")
                expect(rows).to_have_count(2, timeout=10_000)
                expect(page.locator(f'[data-gateway="{own}"]')).to_contain_text(mesh.url)
                expect(page.locator(f'[data-gateway="{own}"]')).to_contain_text("ready")
                expect(page.locator('[data-gateway="other-gw"]')).to_contain_text("1,234")
                stale = page.locator('[data-gateway="other-gw"] td.config span[title]')
                expect(stale).to_contain_text("newest does not compile")
                expect(stale).to_have_attribute("title", OTHER["config_error"])
                version = str(mesh.running.plane.table.config_version)  # no pill: it is up to date
                expect(page.locator(f'[data-gateway="{own}"] td.config')).to_have_text(version)
                expect(page.locator("#page-gateways .banner.bad")).to_contain_text("other-gw dropped 3")
                page.screenshot(path=str(ARTIFACTS / "dashboard-gateways.png"), full_page=True)
            finally:
                browser.close()
    assert problems == []
