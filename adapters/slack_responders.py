"""Slack answers: text streamed or edited in place, and files, in one channel or thread.

`SlackResponder` streams natively (`chat.startStream`/`appendStream`/`stopStream`) in threads
where the workspace has it, else posts a placeholder and edits it with `chat.update` at the
throttled interval. `EphemeralResponder` answers a slash command only the asker sees.
Both post approval requests (`ask_approval`, Block Kit buttons: `slack_approvals`); an
ephemeral message cannot be updated, so a private slash answer's request goes to the asker's
DM, where its answer then goes on (`SlackAdapter.responder_for`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_approvals import request_message
from adapters.slack_files import SlackFiles
from adapters.slack_format import measure as slack_measure
from adapters.slack_format import to_mrkdwn
from core.model import ApprovalRequest, Attachment, MessageRef, OutgoingFile

log = logging.getLogger(__name__)

LIMIT = 4000  # characters as shown: Slack truncates text past 4,000 (slack_format.measure)
NEEDS_YES = "I need your approval to go on: I have sent you the request in a direct message."
NO_NATIVE_STREAM = {"unknown_method", "not_allowed_token_type", "method_deprecated",
                    "feature_not_enabled", "not_supported"}  # fmt: skip


def _neutralise(markdown: str) -> str:
    """Native streams render Markdown themselves; keep `<!here>`/`<@U1>` from pinging."""
    return markdown.replace("<!", "&lt;!").replace("<@", "&lt;@").replace("<#", "&lt;#")


class SlackResponder:
    """Answers in one channel or thread: text, files and approval requests in the same place.
    An empty `channel` is the bot's DM with `user`, opened at the first post."""

    limit = LIMIT
    typing_interval = 0.0  # one working signal: a placeholder or the assistant status

    def measure(self, text: str) -> int:
        """Characters Slack shows for the part, as its limit counts them."""
        return slack_measure(text)

    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        *,
        thread_ts: str | None,
        edit_interval: float,
        native: bool,
        team: str,
        user: str,
        thinking: str,
        files: SlackFiles,
        set_status: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.client = client
        self.files = files
        self.channel = channel
        self.thread_ts = thread_ts or None
        self.edit_interval = edit_interval
        self.native = native and self.thread_ts is not None
        self.team, self.user = team, user
        self.thinking = thinking
        self.set_status = set_status
        self._placeholder: str | None = None
        self._placing = asyncio.Lock()  # the first text waits for the placeholder to exist
        self._streams: dict[str, str] = {}  # ts -> markdown streamed so far

    async def _where(self) -> str:
        """The channel, the DM with the user opened first if that is where this answers."""
        if not self.channel:
            self.channel = await self.files.dm_with(self.user)
        return self.channel

    async def typing(self) -> None:
        if self.set_status is not None:
            await self.set_status("is thinking…")
        elif not self.native and self.thinking:
            async with self._placing:
                sent = await self.client.chat_postMessage(
                    channel=await self._where(), thread_ts=self.thread_ts, text=self.thinking
                )
                self._placeholder = str(sent["ts"])

    async def send(self, text: str, *, final: bool) -> MessageRef:
        await self._where()
        if self.native and not final:
            try:
                started = await self.client.chat_startStream(
                    channel=self.channel,
                    thread_ts=self.thread_ts or "",
                    markdown_text=_neutralise(text),
                    recipient_team_id=self.team or None,
                    recipient_user_id=self.user or None,
                )
            except SlackApiError as exc:
                if exc.response.get("error") not in NO_NATIVE_STREAM:
                    raise
                log.info("slack: native streaming unavailable; posting and editing instead")
                self.native = False
            else:
                ts = str(started["ts"])
                self._streams[ts] = text
                return MessageRef(ts, self.channel)
        async with self._placing:
            placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            await self._update(placeholder, text)
            return MessageRef(placeholder, self.channel)
        sent = await self.client.chat_postMessage(
            channel=self.channel, thread_ts=self.thread_ts, text=to_mrkdwn(text),
            unfurl_links=False, unfurl_media=False,
        )  # fmt: skip
        return MessageRef(str(sent["ts"]), self.channel)

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        streamed = self._streams.get(ref.id)
        if streamed is None:
            await self._update(ref.id, text)
            return
        delta = text[len(streamed) :] if text.startswith(streamed) else None
        if delta is None:  # the text changed behind the stream: close it, then replace it
            await self.client.chat_stopStream(channel=self.channel, ts=ref.id)
            del self._streams[ref.id]
            await self._update(ref.id, text)
        elif final:
            await self.client.chat_stopStream(
                channel=self.channel, ts=ref.id, markdown_text=_neutralise(delta) or None
            )
            del self._streams[ref.id]
        elif delta:
            await self.client.chat_appendStream(
                channel=self.channel, ts=ref.id, markdown_text=_neutralise(delta)
            )
            self._streams[ref.id] = text

    async def delete(self, ref: MessageRef) -> None:
        self._streams.pop(ref.id, None)
        await self.client.chat_delete(channel=self.channel, ts=ref.id)

    async def _update(self, ts: str, text: str) -> None:
        await self.client.chat_update(channel=self.channel, ts=ts, text=to_mrkdwn(text))

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        return await self.files.fetch(attachment, max_bytes)

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        """Posted where the text answers go: the channel, in the same thread."""
        return await self.files.upload(file, channel=await self._where(), thread_ts=self.thread_ts)

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        """The request with Approve and Deny, where the answer goes (the same thread)."""
        return await post_request(self.client, await self._where(), self.thread_ts, request)


async def post_request(
    client: AsyncWebClient, channel: str, thread_ts: str | None, request: ApprovalRequest
) -> MessageRef:
    text, blocks = request_message(request)
    sent = await client.chat_postMessage(
        channel=channel, thread_ts=thread_ts, text=text, blocks=blocks,
        unfurl_links=False, unfurl_media=False,
    )  # fmt: skip
    return MessageRef(str(sent["ts"]), channel)


class EphemeralResponder:
    """A slash command answer only the asker sees: sent once, when complete.

    Slack has no ephemeral files (`chat.postEphemeral` takes no upload, nor does a
    `response_url`), and posting one in the channel would show everyone a private answer:
    files go to the bot's DM with the asker instead (the im:write scope)."""

    limit = LIMIT
    edit_interval = 3600.0
    typing_interval = 0.0

    def measure(self, text: str) -> int:
        """Characters Slack shows for the part, as its limit counts them."""
        return slack_measure(text)

    def __init__(
        self, respond: Callable[..., Awaitable[Any]], *, files: SlackFiles, user: str
    ) -> None:
        self.respond = respond
        self.files = files
        self.user = user

    async def typing(self) -> None:
        return None

    async def send(self, text: str, *, final: bool) -> MessageRef:
        if final:
            await self.respond(text=to_mrkdwn(text), response_type="ephemeral")
        return MessageRef("ephemeral")

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        if final:
            await self.respond(text=to_mrkdwn(text), response_type="ephemeral")

    async def delete(self, ref: MessageRef) -> None:
        return None  # only complete answers are sent

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        return await self.files.fetch(attachment, max_bytes)

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        """In the bot's DM with the asker: only they see it, as with the text."""
        channel = await self.files.dm_with(self.user)
        return await self.files.upload(file, channel=channel, thread_ts=None)

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        """In the bot's DM with the asker, the answer going on there: an ephemeral message
        cannot be updated (its buttons would stay), and the channel must not see it."""
        channel = await self.files.dm_with(self.user)
        ref = await post_request(self.files.client, channel, None, request)
        await self.respond(text=NEEDS_YES, response_type="ephemeral")
        return ref
