"""The console at /ui in a real browser: Debian's chromium, headless, driven by Playwright's Python API.
It submits a workflow from the page, watches the DAG turn green node by node over the SSE stream,
checks the Gantt's spans against the workflow's recorded timings, and keeps a screenshot in docs/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.gateway.support import llm

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
WORKFLOW = {"template": "fruit-report", "nodes": [
    llm("topic", "Name one fruit.", max_tokens=6, temperature=0),
    llm("color", "What color is {{topic}}?", max_tokens=6, temperature=0),
    llm("taste", "How does {{topic}} taste?", max_tokens=6, temperature=0),
    {"id": "lookup", "type": "external", "messages": [{"role": "user", "content": "{{topic}}"}]},  # a tool
    llm("summary", "Combine: {{color}} / {{taste}} / {{lookup}}", max_tokens=6, temperature=0)]}
NODES = {"topic", "color", "taste", "lookup", "summary"}

# Records every status the DAG's nodes take, in order, with the time it was seen (a MutationObserver:
# the page is watched from outside, as a person would).
WATCH = """() => {
  window.__seen = [];
  const note = (el) => window.__seen.push([el.getAttribute("data-node"), el.getAttribute("data-status"),
                                           performance.now()]);
  new MutationObserver((changes) => {
    for (const c of changes) {
      if (c.type === "attributes" && c.target.matches && c.target.matches("#dag .node")) note(c.target);
      for (const n of c.addedNodes || []) {
        if (n.querySelectorAll) n.querySelectorAll(".node[data-node]").forEach(note);
      }
    }
  }).observe(document.querySelector("#dag"), {subtree: true, childList: true, attributes: true,
                                              attributeFilter: ["data-status"]});
}"""


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is not installed (scripts/setup installs it)"
    return path


async def test_the_console_shows_a_workflow_run_live(gw):
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 820})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(gw.url + "/ui")
            await page.wait_for_selector("#conn.ok")
            await page.evaluate(WATCH)
            await page.click("#submit-box summary")
            await page.fill("#submit-json", json.dumps(WORKFLOW, indent=1))
            await page.click("#submit-btn")
            await page.wait_for_function("document.querySelectorAll('#dag .node').length === 5")
            wf_id = await page.text_content("#wf-title")
            # the tool node waits for its result, as the page shows; the test plays the tool
            await page.wait_for_selector('#dag .node[data-node="lookup"][data-status="waiting"]', timeout=180_000)
            status, _, _ = await gw.call("POST", f"/v1/workflows/{wf_id}/nodes/lookup/result",
                                         {"output": "an encyclopedia entry"})
            assert status == 200
            await page.wait_for_function(
                "document.querySelectorAll('#dag .node[data-status=finished]').length === 5", timeout=180_000)
            seen = await page.evaluate("window.__seen")
            # the list shows it, with its template
            await page.wait_for_selector(f'#workflows tr[data-id="{wf_id}"] .status.finished')
            row = await page.text_content(f'#workflows tr[data-id="{wf_id}"]')
            assert "fruit-report" in row

            status, body, _ = await gw.call("GET", f"/v1/workflows/{wf_id}")
            assert status == 200 and body["status"] == "finished"
            # green node by node, in the DAG's order: never all at once
            green_at = {}
            for node, state, at in seen:
                if state == "finished":
                    green_at.setdefault(node, at)
            assert set(green_at) == NODES
            assert green_at["topic"] < min(green_at["color"], green_at["taste"], green_at["lookup"])
            assert max(green_at["color"], green_at["taste"], green_at["lookup"]) < green_at["summary"]
            states_when_topic_green = {n: s for n, s, at in seen if at <= green_at["topic"]}
            assert states_when_topic_green.get("summary") != "finished"
            assert {"pending", "running"} & {s for n, s, _ in seen if n == "summary"}

            await _check_gantt(page, body)
            assert not errors, errors
            await page.wait_for_selector(f'#workers .worker[data-worker="{gw.config.worker_urls[0]}"]')
            hit_rate = await page.text_content(f'[data-hit-rate="{gw.config.worker_urls[0]}"]')
            assert hit_rate.endswith("%")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            await browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


async def _check_gantt(page, body: dict) -> None:
    """Each bar's span is the recorded one, and the bars are placed on one linear time axis."""
    await page.wait_for_function(
        "document.querySelectorAll('#gantt .bar[data-phase=decode]').length === 4")
    bars = await page.eval_on_selector_all("#gantt .bar", """els => els.map(e => ({
        node: e.dataset.node, phase: e.dataset.phase, start: +e.dataset.start, end: +e.dataset.end,
        x: +e.getAttribute("x"), w: +e.getAttribute("width")}))""")
    by = {(b["node"], b["phase"]): b for b in bars}
    assert len(by) == len(bars) == 13  # queue, prefill, decode for each of the 4 LLM nodes; the tool's span
    for name, node in body["nodes"].items():
        t = node["timings"]
        expected = {"queue": (t["ready"], t["started"]), "prefill": (t["started"], t["first_token"]),
                    "decode": (t["first_token"], t["finished"])}
        if node["type"] == "external":
            expected = {"tool": (t["started"], t["finished"])}
        for phase, (start, end) in expected.items():
            bar = by[(name, phase)]
            assert bar["start"] == pytest.approx(start, abs=1e-6) and bar["end"] == pytest.approx(end, abs=1e-6)
            assert start <= end
    # one linear axis: pixels per second the same for every bar's start and end
    t0 = body["created"]
    scale = [(b["x"] - by[("topic", "queue")]["x"]) / (b["start"] - by[("topic", "queue")]["start"])
             for b in bars if abs(b["start"] - by[("topic", "queue")]["start"]) > 0.05]
    assert scale and max(scale) - min(scale) < 1e-3 * max(scale)
    origin = by[("topic", "queue")]["x"] - scale[0] * (by[("topic", "queue")]["start"] - t0)
    for b in bars:
        assert b["x"] == pytest.approx(origin + scale[0] * (b["start"] - t0), abs=0.5)
        assert b["x"] + b["w"] == pytest.approx(origin + scale[0] * (b["end"] - t0), abs=1.01)
    notes = await page.eval_on_selector_all("#gantt [data-cache]", "els => els.map(e => e.textContent)")
    assert sorted(notes) == sorted(["finished"] + [n for n in notes if n.startswith("finished · cache ")]), notes
    labels = await page.eval_on_selector_all("#gantt .row-label", "els => els.map(e => e.textContent)")
    assert sum("@127.0.0.1:" in label for label in labels) == 4, labels  # the worker of each LLM call
