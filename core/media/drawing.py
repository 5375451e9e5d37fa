"""Pictures out: `/image <prompt>` and the `generate_image` tool, through the Images API.

The same checks as a chat turn run before the (slow, paid) call: the rate limit and the
daily budget from the turn's one read, moderation of the prompt. The picture is posted where
it was asked; the history records the request and a line saying it was drawn, and the
user's usage counts the picture.
"""

from __future__ import annotations

import logging
from typing import Any

from core.config import Settings
from core.conversation.exchange import Exchange
from core.llm.moderation import Moderator
from core.media.sniff import image_type
from core.model import MediaKind, Message, OutgoingFile, Turn
from core.protocols import LLMError, MediaModel, MediaResponder, Responder
from core.storage import Store
from core.streaming.reply import reply
from core.tools.toolbox import Tool, ToolContext

log = logging.getLogger(__name__)

USAGE = "Tell me what to draw: `/image a lighthouse at dawn, watercolour`."
NO_FILES = "I can't post pictures here."
FAILED = "Sorry, I couldn't draw that just now. Please try again."
PROMPT_CHARS = 4000
TOOL_TIMEOUT = 180.0  # seconds: a picture takes far longer than `tools.timeout`


class Drawing:
    def __init__(
        self,
        media: MediaModel,
        store: Store,
        exchange: Exchange,
        settings: Settings,
        *,
        moderator: Moderator | None = None,
    ) -> None:
        self.media = media
        self.store = store
        self.exchange = exchange
        self.settings = settings
        self.moderator = moderator

    async def command(self, message: Message, responder: Responder) -> None:
        """`/image <prompt>`."""
        prompt = (message.command.args if message.command else "").strip()[:PROMPT_CHARS]
        if not prompt:
            await reply(responder, USAGE)
            return
        if not isinstance(responder, MediaResponder):
            await reply(responder, NO_FILES)
            return
        key = message.key.scoped(self.settings.scope(message.platform))
        said = self.exchange.mask(prompt)  # the Images API is a model provider too
        if (refusal := await self._moderated(said.text)) is not None:
            await reply(responder, refusal)
            return
        async with self.store.lock(key, lazy=True) as held:
            opened = await self.exchange.open(message, key, lock=held, history=False)
            if opened.refusal is not None:
                await reply(responder, opened.refusal)
                await self.exchange.forget(message, key)
                return
            await _typing(responder)
            drawn = await self._draw(said.text, responder)
            asked = Turn("user", f"/image {said.text}", message.user.name, user=message.user.id)
            shown = Turn("assistant", f"[drew a picture of: {said.text}]" if drawn else FAILED)
            await self.exchange.close(
                message, key, (asked, shown), lock=held, opened=opened,
                masks=said.added, drawn=1 if drawn else 0,
            )  # fmt: skip

    async def tool(self, arguments: dict[str, Any], context: ToolContext) -> str:
        """`generate_image`: draws and posts; tells the model what happened."""
        prompt = str(arguments.get("prompt", "")).strip()[:PROMPT_CHARS]
        responder = context.responder
        if not prompt:
            return "No prompt was given."
        if not isinstance(responder, MediaResponder):
            return "Pictures cannot be posted on this platform."
        refusal = await self._moderated(prompt)
        if refusal is not None:
            return f"Not drawn: {refusal}"
        if not await self._draw(prompt, responder):
            return "The picture could not be drawn (the image service failed)."
        context.counts["images"] += 1  # the turn's usage counts it
        return "The picture was drawn and posted in the chat; do not describe a link to it."

    def as_tool(self) -> Tool:
        return Tool(
            "generate_image",
            "Draw a picture from a text description and post it in the chat.",
            {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "what to draw, in detail"}
                },
                "required": ["prompt"],
            },
            self.tool,
            timeout=TOOL_TIMEOUT,
        )

    async def _draw(self, prompt: str, responder: MediaResponder) -> bool:
        try:
            picture = await self.media.draw(
                prompt, model=self.settings.llm.image_model, size=self.settings.media.image_size
            )
        except LLMError as exc:
            log.warning("image generation failed: %s", exc)
            await reply(responder, FAILED)
            return False
        try:
            await responder.send_file(
                OutgoingFile(
                    picture, "picture.png", image_type(picture) or "image/png", MediaKind.IMAGE
                )
            )
        except Exception as exc:
            log.warning("posting a picture failed: %s", type(exc).__name__)
            await reply(responder, "Sorry, I drew it but couldn't post it here.")
            return False
        return True

    async def _moderated(self, text: str) -> str | None:
        if self.moderator is None:
            return None
        return self.moderator.refusal(await self.moderator.check(text))


async def _typing(responder: Responder) -> None:
    try:
        await responder.typing()
    except Exception as exc:  # decoration only
        log.debug("typing failed: %s", type(exc).__name__)
