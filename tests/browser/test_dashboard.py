"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Never downloads a browser: ``./.ci/ensure-browser`` installs Debian's package in the test
command, and when it is missing this test fails and says so. A screenshot of each page is
written to tests/artifacts/.
"""

from __future__ import annotations

import pytest

from models.zoo import digits_holdout
from tests.browser.chromium import ARTIFACTS, launch
from tests.support.inprocess import in_process_mesh
from tests.support.procs import model_server, oip_digits, wait_flushed
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    with (
        model_server(tmp, "digits", "v1") as v1,
        model_server(tmp, "digits", "v2") as v2,
        in_process_mesh(tmp / "data", {"MESHGATE_ACCESS_LOG": "off"}) as m,
    ):
        m.register("digits", "v1", v1)
        m.register("digits", "v2", v2)
        m.register("ranker", "r1", v1)
        m.register("ranker", "r2", v2)
        r = m.admin.post(
            "/v1/experiments",
            json={
                "name": "ab",
                "model": "digits",
                "arms": {"v1": 50, "v2": 50},
                "metrics": ["accuracy"],
                "engine": "frequentist",  # the page must show this engine's p, not the sequential one
            },
        )
        assert r.status_code == 201, r.text
        r = m.admin.post("/v1/canaries", json={"model": "ranker", "candidate": "r2", "steps": [10, 50, 100]})
        assert r.status_code == 201, r.text
        x, _ = digits_holdout()
        seen = set()
        for i in range(400):  # bounded: until both arms have traffic (config propagates first)
            resp = m.data.post(
                "/v2/models/digits/infer",
                content=oip_digits([x[i % len(x)].tolist()]),
                headers={"x-meshgate-key": f"user-{i}"},
            )
            assert resp.status_code == 200
            if "x-meshgate-arm" in resp.headers:
                seen.add(resp.headers["x-meshgate-arm"])
            if len(seen) == 2 and i >= 200:
                break
        assert seen == {"v1", "v2"}
        yield m


def _settled_latency(mesh) -> dict:
    """The latency metric's results once every counter the gateway holds is in the store."""
    wait_flushed(mesh.url)
    results = mesh.admin.get("/v1/experiments/ab/results").json()
    return next(m for m in results["metrics"] if m["name"] == "latency")


def test_dashboard_signs_in_and_shows_the_experiment_its_arms_and_the_canary(mesh):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(f"{mesh.admin_url}/ui")
            expect(page.locator("#signin-form")).to_be_visible()

            page.fill("#token", "not-the-token")
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#signin-error")).to_contain_text("wrong admin token")
            problems.clear()  # the refused sign-in is a 401 the browser reports; it is expected

            page.fill("#token", mesh.token)
            page.click("#signin-form button[type=submit]")
            expect(page.locator('[data-model="digits"]')).to_be_visible()
            expect(page.locator('[data-model="digits"]')).to_contain_text("experiment ab")
            expect(page.locator('[data-model="digits"] tbody tr')).to_have_count(
                2 + 2
            )  # versions + endpoints
            cookie = next(c for c in context.cookies() if c["name"] == "meshgate_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert mesh.token not in cookie["value"]
            assert mesh.token not in page.url
            page.screenshot(path=str(ARTIFACTS / "dashboard-models.png"), full_page=True)

            page.click('nav a[data-page="experiments"]')
            card = page.locator('[data-experiment="ab"]')
            expect(card).to_be_visible()
            expect(card.locator('[data-arm="v1"]')).to_be_visible()
            expect(card.locator('[data-arm="v2"]')).to_be_visible()
            weights = {"weights": {"v1": 0.25, "v2": 0.75}}  # relative weights below 1
            mesh.admin.patch("/v1/experiments/ab", json=weights).raise_for_status()
            expect(card.locator('[data-arm="v1"] td.share')).to_have_text("25.0%", timeout=10_000)  # not "0"
            expect(card.locator('[data-arm="v2"] td.share')).to_have_text("75.0%")
            expect(card).to_contain_text("Sample ratio check")
            expect(card.locator("svg.forest").first).to_be_visible()
            expect(card).to_contain_text("chance to beat control")
            rows = card.locator('table[data-metric="latency"] tbody tr')

            def page_and_api() -> tuple[list[str], dict]:
                """The page's latency means and the API's settled figures, read together: a request
                counted after one flush moves both, so they are compared at the same moment."""
                settled = _settled_latency(mesh)
                shown = [rows.nth(i).locator("td.mean").inner_text() for i in range(2)]
                return shown, settled

            shown_ms, latency = wait_for(  # until a refresh shows the API's figures
                page_and_api,
                # the page's own format (4 decimals), not a second rounding of it: 0.46951 shows
                # as "0.4695", which rounds to 0.469 while the API's figure rounds to 0.470
                lambda seen: seen[0] == [f"{arm['mean'] * 1000:.4f}" for arm in seen[1]["arms"]],
                what="the page showing the API's latency means (ms)",
                interval=0.2,
            )
            expect(card).to_contain_text("latency (continuous, ms, lower is better)")
            for i, arm in enumerate(latency["arms"]):  # control first, as the API lists them
                shown_ms = float(rows.nth(i).locator("td.mean").inner_text())
                assert shown_ms == pytest.approx(arm["mean"] * 1000, abs=1e-4)  # seconds shown as ms
            treatment = latency["arms"][1]
            assert treatment["p_value_adjusted"] != treatment["sequential_p_value_adjusted"]
            shown_p = float(rows.nth(1).locator("td.p-value").get_attribute("title"))
            assert shown_p == pytest.approx(treatment["p_value_adjusted"], rel=1e-9)
            page.screenshot(path=str(ARTIFACTS / "dashboard-experiments.png"), full_page=True)

            page.click('nav a[data-page="canaries"]')
            canary = page.locator("[data-canary]")
            expect(canary).to_be_visible()
            expect(canary).to_contain_text("candidate r2")
            expect(canary.locator(".steps span.current")).to_have_text("10%")
            page.screenshot(path=str(ARTIFACTS / "dashboard-canaries.png"), full_page=True)

            # it refreshes by itself: new traffic shows without a reload
            before = page.locator("#status").inner_text()
            page.wait_for_function(
                "before => document.getElementById('status').textContent !== before",
                arg=before,
                timeout=10_000,
            )

            page.click("#signout")
            expect(page.locator("#signin-form")).to_be_visible()
            assert not [c for c in context.cookies() if c["name"] == "meshgate_session"]
        finally:
            browser.close()
    assert problems == [], problems
    assert (ARTIFACTS / "dashboard-experiments.png").stat().st_size > 10_000


def test_dashboard_keys_page_shows_limits_and_usage(mesh):
    from playwright.sync_api import expect, sync_playwright

    for name in ("dash-a", "dash-old"):
        r = mesh.admin.post("/v1/keys", json={"name": name, "rpm": 100, "models": ["digits"]})
        assert r.status_code in (201, 409), r.text
    mesh.admin.delete("/v1/keys/dash-old").raise_for_status()
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(f"{mesh.admin_url}/ui#keys")
            page.fill("#token", mesh.token)
            page.click("#signin-form button[type=submit]")
            row = page.locator('[data-key="dash-a"]')
            expect(row).to_be_visible()
            expect(row).to_contain_text("active")
            expect(row).to_contain_text("0 / 100")
            expect(row).to_contain_text("digits")
            expect(page.locator('[data-key="dash-old"]')).to_contain_text("revoked")
            page.screenshot(path=str(ARTIFACTS / "dashboard-keys.png"), full_page=True)
        finally:
            browser.close()
