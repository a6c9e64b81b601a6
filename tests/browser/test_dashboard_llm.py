"""The dashboard shows an LLM experiment's per-arm LLM figures (real gateway, real tinylm, Chromium)."""

from __future__ import annotations

import pytest

from tests.browser.chromium import ARTIFACTS, launch
from tests.support import model_server, running_mesh, wait_for


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard-llm")
    with (
        model_server(tmp, "tinylm", "v1") as v1,
        model_server(tmp, "tinylm", "v2") as v2,
        running_mesh(tmp / "data") as m,
    ):
        for version, url in (("v1", v1), ("v2", v2)):
            m.register("chat", version, url, protocol="openai", upstream_model="tinylm", price_out=1.0)
        experiment = {"name": "chat-ab", "model": "chat", "arms": {"v1": 50, "v2": 50}}
        assert m.admin.post("/v1/experiments", json=experiment).status_code == 201
        # ignore_eos: every answer has 8 tokens (tinylm v2 may end "Speak." at once: no cost to show)
        body = {"model": "chat", "messages": [{"role": "user", "content": "Speak."}], "max_tokens": 8,
                "ignore_eos": True, "stream": True}  # fmt: skip
        arms = set()
        for i in range(200):  # bounded: until both arms have streamed answers (config propagates first)
            with m.data.stream(
                "POST", "/v1/chat/completions", json=body, headers={"x-meshgate-key": f"u{i}"}
            ) as r:
                assert r.status_code == 200
                r.read()
                arms.add(r.headers.get("x-meshgate-arm"))
            if {"v1", "v2"} <= arms and i >= 20:
                break
        m.wait_flushed()
        yield m


def test_experiment_card_shows_the_llm_table_per_arm(mesh):
    from playwright.sync_api import expect, sync_playwright

    results = wait_for(
        lambda: mesh.admin.get("/v1/experiments/chat-ab/results").json(),
        lambda r: all(a["llm"] for a in r["arms"]),
        what="LLM figures on both arms",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(f"{mesh.admin_url}/ui")
            page.fill("#token", mesh.token)
            page.click("#signin-form button[type=submit]")
            page.click('nav a[data-page="experiments"]')
            card = page.locator('[data-experiment="chat-ab"]')
            expect(card.locator("table.llm")).to_be_visible()
            for arm in results["arms"]:
                row = card.locator(f'table.llm [data-llm-arm="{arm["arm"]}"]')
                expect(row).to_be_visible()
                assert float(row.locator("td.ttft-p50").inner_text()) > 0
                assert float(row.locator("td.cost").inner_text()) > 0
            expect(card.locator('table[data-metric="ttft"]')).to_be_visible()
            expect(card).to_contain_text("ttft (continuous, ms, lower is better)")
            page.screenshot(path=str(ARTIFACTS / "dashboard-llm.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [], problems
