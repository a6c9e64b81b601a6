"""An expired session in real headless Chromium: the dashboard asks to sign in again and keeps
the last data out of sight, also when the address's #page changes (back/forward, a link)."""

from __future__ import annotations

from tests.browser.chromium import launch
from tests.support.inprocess import in_process_mesh


def test_an_expired_session_hides_every_page_even_when_the_hash_changes(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with in_process_mesh(tmp_path / "data", {"MESHGATE_ACCESS_LOG": "off"}) as mesh, sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{mesh.admin_url}/ui")
            page.fill("#token", mesh.token)
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#page-models")).to_contain_text("No models registered yet.")

            context.clear_cookies()  # the session ends (expiry, a new token): the next refresh is a 401
            expect(page.locator("#signin-error")).to_contain_text("session expired", timeout=10_000)
            # change the hash and return once the page's own hashchange handler (render) has run
            page.evaluate(
                """() => new Promise(done => {
                    addEventListener("hashchange", () => setTimeout(done, 0), { once: true });
                    location.hash = "#gateways";
                })"""
            )
            for name in ("models", "experiments", "canaries", "gateways"):
                expect(page.locator(f"#page-{name}")).to_be_hidden()
            expect(page.locator("#signin-form")).to_be_visible()
        finally:
            browser.close()
