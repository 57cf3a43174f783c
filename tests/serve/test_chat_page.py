"""The chat page in a real headless browser (Debian's Chromium driven by Playwright): a message
typed and sent, a streamed answer appears, the conversation is kept, tokens/s is shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_path() -> Path:
    found = CHROMIUM if CHROMIUM.is_file() else None
    found = found or next(
        (Path(p) for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if found is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium package)")
    return found


@pytest.mark.slow
def test_chat_page_streams_an_answer_and_keeps_the_conversation(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")
    executable = browser_path()
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(executable),
            args=ARGS,
            headless=True,
        )
        try:
            page = context.new_page()
            sent = []
            page.on(
                "request",
                lambda r: sent.append(r.post_data_json) if "/chat/completions" in r.url else None,
            )
            page.goto(f"{server.url}/")
            sync_api.expect(page.locator("#model")).not_to_contain_text("connecting")
            for turn, text in enumerate(["hello there", "and the cat?"], start=1):
                page.fill("#max-tokens", "12")
                page.fill("#input", text)
                page.click("#send")
                answer = page.locator(".message.assistant").nth(turn - 1)
                sync_api.expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
                sync_api.expect(page.locator("#send")).to_be_enabled(timeout=60_000)
                assert answer.inner_text().strip(), "no streamed answer"
                assert "error" not in (answer.get_attribute("class") or "")
                assert page.locator(".message.user").count() == turn
            # The second request carried the whole conversation, the first answer included.
            kept = page.evaluate("conversation")
            assert [m["role"] for m in kept] == ["user", "assistant"] * 2
            assert kept[1]["content"].strip()
            assert sent[1]["messages"] == kept[:3]
            assert sent[1]["stream"] is True
        finally:
            context.close()
