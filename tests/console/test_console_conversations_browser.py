"""A two-way SMS conversation in a real browser (headless Debian Chromium via Playwright; skipped,
saying why, without either): the nav indicator lights up live, the operator opens the
conversation and replies, the emulated phone gets it. Saves ``conversation.png``."""

from __future__ import annotations

import pytest
import test_console_browser
from test_console_browser import chromium, shots, sign_in  # noqa: F401
from test_console_conversations import MARIA, OPS_NUMBER, start_with_pools

# the same skips as the other browser tests (no Playwright, no Chromium)
pytestmark = [*test_console_browser.pytestmark, pytest.mark.twilio]


@pytest.fixture
def gw(gateway_config, start_gateway, twilio_emulator):
    return start_with_pools(gateway_config, start_gateway, twilio_emulator, refresh="500ms")


def test_operator_opens_a_conversation_and_replies(chromium, gw, shots, twilio_emulator):  # noqa: F811
    from playwright.sync_api import expect

    phone = twilio_emulator.phone(MARIA)
    page = sign_in(chromium, gw, "otto")
    badge = page.locator("#sms-unread")
    expect(badge).to_have_text("")
    phone.send("Is the boiler <b>OK</b>?", to=OPS_NUMBER)
    expect(badge).to_contain_text("1 new")  # without a reload
    page.get_by_role("link", name="Conversations").click()
    row = page.locator(f"tr[data-number='{MARIA}']")
    expect(row).to_have_class("unread")
    page.screenshot(path=shots / "conversations.png", full_page=True)
    row.get_by_role("link", name="Maria Lopez").click()
    expect(page.locator("#thread")).to_contain_text("Is the boiler <b>OK</b>?")  # markup shown as text
    page.get_by_label("Message").fill("Checking it now")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    expect(page.locator("#thread li.mine").last).to_contain_text("Checking it now")
    expect(badge).to_have_text("")
    page.screenshot(path=shots / "conversation.png", full_page=True)
    phone.expect_sms(contains="Checking it now", from_=OPS_NUMBER)
    page.close()
