"""The chat page in a real headless Chromium, against whatever server `web_base_url` names
(see conftest.py): sending, streaming, history, Markdown, XSS, auth, failures, phone width;
and files (attached with the picker, sent back by the bot), where the server is the real web
adapter with a recording handler in front of the core (`files_app`); and an approval card
(`approving_app`: the calculator needs a yes).

The tests know the page's DOM (`.msg.user`, `.msg.assistant[data-state]`, `#input`, ...) and
the API contract; never how the server makes its answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import FilePayload, Page, Route, expect

from core.config import Secrets, Settings
from core.model import MediaKind, OutgoingFile
from tests.browser.conftest import BrowserLog
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.integration.test_web_media import Recorder, png
from tests.web_channel import running_web

CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Every text the last answer bubble shows, as it changes.
WATCH_ANSWERS = """() => {
  window.__answerStates = [];
  new MutationObserver(() => {
    const bubble = [...document.querySelectorAll('.msg.assistant')].at(-1);
    const text = bubble ? bubble.querySelector('.body').textContent : '';
    const states = window.__answerStates;
    if (text && states.at(-1) !== text) states.push(text);
  }).observe(document.getElementById('messages'),
             {childList: true, subtree: true, characterData: true});
}"""

# Anything in the messages that could run script: such elements, on* attributes, js: URLs.
DANGEROUS = """() => {
  const found = [];
  for (const el of document.getElementById('messages').querySelectorAll('*')) {
    const tag = el.tagName.toLowerCase();
    if (['script', 'iframe', 'svg', 'math', 'object', 'embed', 'style', 'form'].includes(tag))
      found.push(tag);
    for (const attribute of el.attributes) {
      if (attribute.name.startsWith('on')) found.push(`${tag}[${attribute.name}]`);
      if (/^\\s*(javascript|data|vbscript):/i.test(attribute.value))
        found.push(`${tag}[${attribute.name}=${attribute.value}]`);
    }
  }
  return found;
}"""


async def open_page(page: Page, url: str) -> None:
    await page.goto(url)
    await expect(page.locator("#composer")).to_be_visible()


async def send(page: Page, text: str) -> None:
    box = page.locator("#input")
    await box.fill(text)
    await box.press("Enter")


async def answered(page: Page) -> Any:
    """The last answer bubble, once its answer is complete."""
    bubble = page.locator(".msg.assistant").last
    await expect(bubble).to_have_attribute("data-state", "done")
    return bubble


async def test_answer_streams_in_pieces_and_history_comes_back_after_reload(
    page: Page, web_base_url: str, set_next_answer: Callable[[str], None]
) -> None:
    answer = "The quick brown fox jumps over the lazy dog, and then it naps in the sun."
    set_next_answer(answer)
    await open_page(page, web_base_url)
    await page.evaluate(WATCH_ANSWERS)

    await send(page, "Tell me about foxes")

    await expect(page.locator(".msg.user")).to_have_text(["Tell me about foxes"])
    bubble = page.locator(".msg.assistant").last
    await expect(bubble).to_have_attribute("data-state", "streaming")
    bubble = await answered(page)
    await expect(bubble).to_have_text(answer)
    states = await page.evaluate("window.__answerStates")
    partial = [state for state in states if state.strip() != answer]
    assert len(partial) >= 2, f"the answer did not arrive in pieces: {states}"
    assert all(answer.startswith(state.strip()) for state in partial), states
    await expect(page.locator("#input")).to_have_value("")
    await expect(page.locator("#conversations button")).to_have_text(["Tell me about foxes"])

    await page.reload()

    await expect(page.locator(".msg")).to_have_text(["Tell me about foxes", answer])
    await expect(page.locator("#chat-title")).to_have_text("Tell me about foxes")


async def test_markdown_is_rendered_and_code_blocks_have_a_copy_button(
    page: Page,
    web_base_url: str,
    set_next_answer: Callable[[str], None],
    artifacts: Path,
) -> None:
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    set_next_answer(
        "Sure. Here is **the plan**:\n\n1. install it\n2. run it\n\n"
        "```python\nprint('hello')\n```\n\nSee the `README` for more."
    )
    await open_page(page, web_base_url)

    await send(page, "How do I run it?")
    bubble = await answered(page)

    await expect(bubble.locator("strong")).to_have_text("the plan")
    await expect(bubble.locator("ol > li")).to_have_text(["install it", "run it"])
    await expect(bubble.locator("pre code")).to_have_text("print('hello')\n")
    await expect(bubble.locator("p code")).to_have_text("README")
    await page.screenshot(path=str(artifacts / "page.png"))
    await bubble.get_by_role("button", name="Copy").click()
    await expect(bubble.get_by_role("button", name="Copied")).to_be_visible()
    assert (await page.evaluate("navigator.clipboard.readText()")).strip() == "print('hello')"


@pytest.mark.parametrize(
    "page", [{}, {"bypass_csp": True}], ids=["with-csp", "csp-bypassed"], indirect=True
)
async def test_html_in_answers_and_user_text_never_runs(
    page: Page,
    web_base_url: str,
    set_next_answer: Callable[[str], None],
    browser_log: BrowserLog,
) -> None:
    """Run twice: with the page's Content-Security-Policy, and without it, so that DOMPurify
    alone is shown to keep everything inert (Chromium still reports CSP violations for the
    handlers it parses in DOMPurify's inert document: those are not attempts to run them)."""
    set_next_answer(
        '<img src=x onerror="window.__xss=1;alert(1)"> and '
        "<script>window.__xss=2;alert(2)</script>\n\n"
        "[click me](javascript:window.__xss=3) "
        '<iframe src="javascript:window.__xss=4"></iframe> '
        '<svg onload="window.__xss=5"><circle r=1 /></svg> '
        '<a href="#" onmouseover="window.__xss=6">hover</a> '
        '<style>body{display:none}</style><form action="/x"><button>go</button></form>\n\n'
        "```html\n<img src=x onerror=alert(1)>\n```"
    )
    user_text = '<b>bold?</b> <img src=y onerror="window.__xss=7;alert(7)">'
    await open_page(page, web_base_url)

    await send(page, user_text)
    bubble = await answered(page)

    for attempt in ("first render", "after reload"):
        await page.locator(".msg a", has_text="hover").hover()
        await page.wait_for_timeout(300)  # time for any handler to fire
        assert await page.evaluate("window.__xss") is None, attempt
        assert browser_log.dialogs == [], attempt
        assert await page.evaluate(DANGEROUS) == [], attempt
        user = page.locator(".msg.user .body")
        await expect(user).to_have_text(user_text)  # shown as text...
        assert await user.evaluate("body => body.childElementCount") == 0  # ...not as HTML
        bubble = page.locator(".msg.assistant").last
        await expect(bubble.locator("pre code")).to_have_text("<img src=x onerror=alert(1)>\n")
        await expect(bubble).to_contain_text("and")
        await expect(page.locator("body")).to_be_visible()  # the <style> did not apply
        await page.reload()
        await expect(page.locator(".msg")).to_have_count(2)


async def test_enter_sends_shift_enter_breaks_the_line_and_commands_go_as_text(
    page: Page, web_base_url: str
) -> None:
    posts: list[Any] = []
    page.on(
        "request",
        lambda request: (
            posts.append(request) if request.method == "POST" and "/api/" in request.url else None
        ),
    )
    await open_page(page, web_base_url)
    box = page.locator("#input")

    await box.press_sequentially("line one")
    await box.press("Shift+Enter")
    await box.press_sequentially("line two")
    await expect(box).to_have_value("line one\nline two")
    await box.press("Enter")

    await expect(page.locator(".msg.user").last).to_have_text("line one\nline two")
    await expect(box).to_have_value("")
    await answered(page)
    await send(page, "/help")
    await expect(page.locator(".msg.user").last).to_have_text("/help")
    await answered(page)

    bodies = [post.post_data_json for post in posts]
    assert [body["text"] for body in bodies] == ["line one\nline two", "/help"]
    assert all(isinstance(body["id"], str) and body["id"] for body in bodies)
    assert bodies[0]["id"] != bodies[1]["id"]
    cid = posts[0].url.split("/api/conversations/")[1].split("/")[0]
    assert CONVERSATION_ID.fullmatch(cid), cid
    headers = [await post.all_headers() for post in posts]
    assert all(h["accept"] == "text/event-stream" for h in headers)
    assert all("authorization" not in h for h in headers)  # no token: none sent


async def test_a_lost_answer_can_be_resent_and_is_answered_once(
    page: Page, web_base_url: str, set_next_answer: Callable[[str], None]
) -> None:
    set_next_answer("Still here.")
    sent: list[Any] = []

    async def lose_the_first_answer(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        sent.append(route.request.post_data_json)
        if len(sent) == 1:
            await route.fetch()  # the server gets the message and answers it...
            await route.abort("connectionreset")  # ...but the answer never arrives
        else:
            await route.continue_()

    await page.route("**/api/conversations/*/messages", lose_the_first_answer)
    await open_page(page, web_base_url)

    await send(page, "Are you there?")

    bubble = page.locator(".msg.assistant").last
    await expect(bubble).to_have_attribute("data-state", "error")
    await expect(bubble.locator(".error")).to_contain_text("Network error")
    await bubble.get_by_role("button", name="Resend").click()
    bubble = await answered(page)
    await expect(bubble.locator(".body")).to_have_text("Still here.")
    assert len(sent) == 2 and sent[0] == sent[1], sent  # the same text and message id

    await page.unroute("**/api/conversations/*/messages")
    await page.reload()
    await expect(page.locator(".msg")).to_have_text(["Are you there?", "Still here."])


async def test_token_from_the_address_and_the_form_after_a_401(
    page: Page, web_base_url: str
) -> None:
    seen: list[str | None] = []

    async def api(route: Route) -> None:  # this test's own API: only "good" is accepted
        auth = await route.request.header_value("authorization")
        seen.append(auth)
        if auth != "Bearer good":
            await route.fulfill(status=401, json={"error": "unauthorized"})
        else:
            history = [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}]
            await route.fulfill(json={"messages": history})

    await page.route("**/api/**", api)
    await page.goto(f"{web_base_url}#token=stale.jwt.value")

    form = page.locator("#token-form")
    await expect(form).to_be_visible()
    assert seen == ["Bearer stale.jwt.value"]
    assert page.url == web_base_url  # the token left the address bar
    await page.locator("#token-input").fill("good")
    await page.locator("#token-input").press("Enter")

    await expect(form).to_be_hidden()
    await expect(page.locator(".msg")).to_have_text(["hi", "hello"])
    assert seen[-1] == "Bearer good"
    assert await page.evaluate("localStorage.getItem('chatbot.token')") == "good"

    await page.reload()
    await expect(page.locator(".msg")).to_have_text(["hi", "hello"])
    await expect(form).to_be_hidden()
    assert seen[-1] == "Bearer good"


async def test_new_conversation_switching_and_forgetting(
    page: Page,
    web_base_url: str,
    set_next_answer: Callable[[str], None],
    browser_log: BrowserLog,
) -> None:
    await open_page(page, web_base_url)
    set_next_answer("answer one")
    await send(page, "first chat")
    await answered(page)

    await page.get_by_role("button", name="New conversation").click()
    await expect(page.locator(".msg")).to_have_count(0)
    set_next_answer("answer two")
    await send(page, "second chat")
    await answered(page)

    conversations = page.locator("#conversations button")
    await expect(conversations).to_have_text(["second chat", "first chat"])
    await conversations.filter(has_text="first chat").click()
    await expect(page.locator(".msg")).to_have_text(["first chat", "answer one"])
    stored = await page.evaluate("JSON.parse(localStorage.getItem('chatbot.conversations'))")
    ids = [entry["id"] for entry in stored]
    assert len(set(ids)) == 2 and all(CONVERSATION_ID.fullmatch(cid) for cid in ids), ids

    async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        await page.get_by_role("button", name="Forget").click()
    assert (await deleted.value).status == 204
    assert browser_log.dialogs and browser_log.dialogs[0].startswith("confirm:")
    await expect(conversations).to_have_text(["second chat"])
    await expect(page.locator(".msg")).to_have_text(["second chat", "answer two"])


async def test_fits_a_phone_screen(
    page: Page,
    web_base_url: str,
    set_next_answer: Callable[[str], None],
    artifacts: Path,
) -> None:
    await page.set_viewport_size({"width": 390, "height": 760})
    set_next_answer(
        "A long word: " + "x" * 120 + "\n\n```\n" + "a_very_long_line_of_code() " * 10 + "\n```"
    )
    await open_page(page, web_base_url)
    await send(page, "y" * 150)
    await answered(page)

    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
        "the page scrolls sideways"
    )
    await expect(page.locator("#input")).to_be_in_viewport()
    await expect(page.locator("#send")).to_be_in_viewport()
    new = page.get_by_role("button", name="New conversation")
    await expect(new).not_to_be_in_viewport()  # the list is tucked away...
    await page.locator("#toggle-sidebar").click()
    await expect(new).to_be_in_viewport()  # ...and slides in
    await page.locator("#conversations button").first.click()
    await expect(new).not_to_be_in_viewport()
    await page.screenshot(path=str(artifacts / "page-phone.png"))


# ---- files --------------------------------------------------------------------------------


@dataclass
class FilesApp:
    base_url: str
    recorder: Recorder  # what reached the server; `to_send`: files the bot sends back


@pytest.fixture
async def files_app(
    settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[FilesApp]:
    recorder = Recorder()
    web = running_web(settings, secrets, redis, jwt_secret=None, wrap=recorder.wrap)
    async with web as (_, port):
        yield FilesApp(f"http://127.0.0.1:{port}/", recorder)


async def test_an_image_attached_with_the_picker_reaches_the_server(
    page: Page, files_app: FilesApp, artifacts: Path
) -> None:
    picture = png(40, 30, "green")
    await open_page(page, files_app.base_url)

    async with page.expect_file_chooser() as chosen:
        await page.get_by_role("button", name="Attach files").click()
    await (await chosen.value).set_files([
        FilePayload(name="cat.png", mimeType="image/png", buffer=picture),
        FilePayload(name="notes.txt", mimeType="text/plain", buffer=b"not this one"),
    ])  # fmt: skip
    pending = page.locator("#pending")
    await expect(pending.locator(".chip")).to_have_text(["cat.png×", "notes.txt×"])
    await expect(pending.locator("img.thumb")).to_have_count(1)  # a picture of the image
    await pending.get_by_role("button", name="Remove notes.txt").click()
    await expect(pending.locator(".chip")).to_have_text(["cat.png×"])
    await page.screenshot(path=str(artifacts / "page-attachment.png"))
    await send(page, "what is this?")
    await answered(page)

    await expect(pending).to_be_hidden()
    user = page.locator(".msg.user").last
    await expect(user.locator(".body")).to_have_text("what is this?")
    await expect(user.locator("img.thumb")).to_have_attribute("alt", "cat.png")
    [message] = files_app.recorder.messages
    assert message.text == "what is this?"
    [image] = message.attachments
    assert (image.name, image.mime_type, image.kind, image.size) == (
        "cat.png", "image/png", MediaKind.IMAGE, len(picture)
    )  # fmt: skip
    assert files_app.recorder.fetched == [picture]  # the exact bytes


async def test_files_the_bot_sends_are_shown_inline(
    page: Page, files_app: FilesApp, browser_log: BrowserLog, artifacts: Path
) -> None:
    files_app.recorder.to_send = [
        OutgoingFile(png(24, 16, "blue"), "drawing.png", "image/png", MediaKind.IMAGE,
                     caption="A **blue** box"),
        OutgoingFile(b"OggS" + bytes(60), "answer.ogg", "audio/ogg", MediaKind.AUDIO),
        OutgoingFile(b"<script>alert(1)</script>", "page.html", "text/html",
                     MediaKind.DOCUMENT),
    ]  # fmt: skip
    await open_page(page, files_app.base_url)

    await send(page, "draw me a box")
    bubble = await answered(page)

    await expect(bubble.locator(".body")).to_have_text("echo: draw me a box")
    image = bubble.locator(".files img")
    await expect(image).to_have_attribute("alt", "drawing.png")
    # decoded (decode() rejects an image the Content-Security-Policy blocked)
    assert (
        await image.evaluate("async img => { await img.decode(); return img.naturalWidth }") == 24
    )
    await expect(bubble.locator(".files .caption strong")).to_have_text("blue")
    audio = bubble.locator(".files audio")
    await expect(audio).to_have_count(1)
    assert await audio.evaluate("a => a.controls && a.src.startsWith('data:audio/ogg;base64,')")
    links = bubble.locator(".files a.download")
    await expect(links).to_have_text(["drawing.png", "answer.ogg", "page.html"])
    await expect(links.last).to_have_attribute("download", "page.html")
    assert await links.last.evaluate("a => a.href.startsWith('blob:')")
    assert browser_log.dialogs == []
    assert not [line for line in browser_log.console if "Content Security Policy" in line]
    await page.screenshot(path=str(artifacts / "page-files.png"))


async def test_an_image_pasted_or_dropped_is_attached(page: Page, files_app: FilesApp) -> None:
    await open_page(page, files_app.base_url)
    await page.evaluate("""() => {
      const transfer = (name) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array([1, 2, 3])], name, {type: "image/png"}));
        return data;
      };
      document.getElementById("input").dispatchEvent(new ClipboardEvent("paste",
          {clipboardData: transfer("pasted.png"), bubbles: true, cancelable: true}));
      document.getElementById("messages").dispatchEvent(new DragEvent("drop",
          {dataTransfer: transfer("dropped.png"), bubbles: true, cancelable: true}));
    }""")

    await expect(page.locator("#pending .chip")).to_have_text(["pasted.png×", "dropped.png×"])
    await send(page, "")  # files alone are a message
    await answered(page)
    [message] = files_app.recorder.messages
    assert [a.name for a in message.attachments] == ["pasted.png", "dropped.png"]
    assert files_app.recorder.fetched == [b"\x01\x02\x03", b"\x01\x02\x03"]


# ---- approvals ----------------------------------------------------------------------------


@pytest.fixture
async def approving_app(
    settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[str]:
    """The real adapter with the calculator marked approve (`tools.approve: ["calc*"]`)."""
    tools = settings.tools.model_copy(update={"enabled": ["calculator"], "approve": ["calc*"]})
    approving = settings.model_copy(update={"tools": tools})
    async with running_web(approving, secrets, redis, jwt_secret=None) as (_, port):
        yield f"http://127.0.0.1:{port}/"


async def test_an_approval_card_is_pressed_and_the_answer_goes_on(
    page: Page, approving_app: str, fake_openai: FakeOpenAI, artifacts: Path
) -> None:
    fake_openai.push(Reply(text="Let me work that out.",
                           tool_calls=[Call("calculator", {"expression": "6*7"})]))  # fmt: skip
    await open_page(page, approving_app)
    await send(page, "what is 6 times 7?")
    card = page.locator(".msg.approval")
    await expect(card).to_have_attribute("data-state", "pending")
    await expect(card.get_by_role("button", name=re.compile("^(Approve|Deny)$"))).to_have_count(2)
    await expect(card.locator(".body code").first).to_have_text("calculator")  # Markdown
    await expect(card.locator(".body pre")).to_contain_text('"expression": "6*7"')
    await expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done")
    await page.screenshot(path=str(artifacts / "page-approval.png"))

    fake_openai.push(Reply(text="6 times 7 is **42**.", tokens_per_second=12))
    await card.get_by_role("button", name="Approve").click()
    await expect(card).to_have_attribute("data-state", "settled")
    await expect(card).to_have_attribute("data-outcome", "approved")
    await expect(card.locator(".outcome")).to_have_text("✅ Approved by local: calculator")
    buttons = card.get_by_role("button", name=re.compile("^(Approve|Deny)$"))
    await expect(buttons).to_have_count(0)  # gone (the code block keeps its Copy)
    continued = await answered(page)
    await expect(continued.locator(".body strong")).to_have_text("42")
    await expect(page.locator(".msg.assistant")).to_have_count(2)  # a new message
    await page.screenshot(path=str(artifacts / "page-approval-settled.png"))
    assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]
