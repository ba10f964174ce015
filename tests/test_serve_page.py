"""The page at `/` in a real browser: Debian's Chromium, headless, driven by playwright (never a downloaded browser).

Skips when playwright or /usr/bin/chromium is absent (CI: `apt-get install -y chromium`; playwright is in the dev
extra). Screenshots at a desktop and a phone width are saved in the test's temporary folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from medpt.generate import prompting  # noqa: E402
from medpt.model.loading import load_tokenizer  # noqa: E402
from tests.servers import NoEos, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Chromium (Debian: apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip

# Counts, per answer column, how often its text changed: more than once means the answer streamed in.
COUNT_UPDATES = """() => { window.updates = {};
  for (const c of document.querySelectorAll('.column')) {
    window.updates[c.dataset.model] = 0;
    new MutationObserver(() => window.updates[c.dataset.model]++)
      .observe(c.querySelector('.answer'), {childList: true, characterData: true, subtree: true});
  } }"""
DONE = """() => [...document.querySelectorAll('.stats')]
  .every(s => /\\d tokens · [\\d.]+ tokens\\/s/.test(s.textContent))
  && document.querySelectorAll('#history li').length === 1"""


def test_the_page_streams_both_answers_side_by_side(trained_run, tiny_model_dir, tmp_path, monkeypatch):
    eos = load_tokenizer(str(trained_run)).eos_token_id
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [NoEos(eos)])  # answers of max_tokens tokens
    with running_server(trained_run) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1280, "height": 800},
        )  # fmt: skip
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector(f'.column[data-model="{trained_run.name}"]')
        page.evaluate(COUNT_UPDATES)
        page.click("summary")  # open the settings
        page.fill("#max-tokens", "24")
        page.fill("#question", "高血压患者日常需要注意什么？")
        page.click("#send")
        page.wait_for_function(DONE, timeout=60_000)
        columns = page.eval_on_selector_all(
            ".column", "cs => cs.map(c => [c.dataset.model, c.querySelector('.answer').textContent, "
            "c.querySelector('.stats').textContent, c.getBoundingClientRect().top])")  # fmt: skip
        updates = page.evaluate("window.updates")
        page.screenshot(path=str(tmp_path / "page-desktop.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        phone_tops = page.eval_on_selector_all(".column", "cs => cs.map(c => c.getBoundingClientRect().top)")
        page.screenshot(path=str(tmp_path / "page-phone.png"), full_page=True)
        history = page.inner_text("#history")
        browser.close()
    assert [c[0] for c in columns] == [tiny_model_dir.name, trained_run.name]  # before | after
    assert all(text.strip() for _, text, _, _ in columns)
    assert all(stats.startswith("24 tokens · ") for _, _, stats, _ in columns)  # the usage the server counted
    assert all(n >= 3 for n in updates.values()), updates  # each answer arrived in pieces: it streamed
    assert columns[0][3] == columns[1][3]  # side by side on a desktop ...
    assert phone_tops[1] > phone_tops[0] + 100  # ... one above the other on a phone
    assert history == "高血压患者日常需要注意什么？"
    assert (tmp_path / "page-desktop.png").stat().st_size > 10_000 and (tmp_path / "page-phone.png").is_file()
