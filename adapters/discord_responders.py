"""How the Discord adapter answers: in a channel (replies, edits, files) or through a slash
command's interaction (the deferred response, follow-ups, then the channel). Approval
requests go the same ways, with their buttons (discord_approvals.py).

Every message the bot sends has `AllowedMentions.none()`, so nothing the model writes can
ping @everyone, @here, a role or a user.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import discord

from adapters.discord_approvals import NO_PINGS, approval_view, fit
from adapters.discord_media import caption_of, to_discord_file
from adapters.file_fetch import FileFetcher
from core.model import ApprovalRequest, Attachment, MessageRef, OutgoingFile

LIMIT = 2000


class ChannelResponder:
    """Answers in a channel, DM or thread: the first part replies to the question, and so
    does every file."""

    limit = LIMIT
    typing_interval = 8.0  # Discord shows typing for 10 s

    def measure(self, text: str) -> int:
        """Discord counts the characters of the content (Markdown it renders itself)."""
        return len(text)

    def __init__(
        self,
        channel: Any,
        *,
        reply_to: discord.Message | None,
        edit_interval: float,
        fetcher: FileFetcher,
    ) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.question = reply_to
        self.edit_interval = edit_interval
        self.fetcher = fetcher
        self._sent: dict[str, discord.Message] = {}

    async def typing(self) -> None:
        await self.channel.typing()

    async def send(self, text: str, *, final: bool) -> MessageRef:
        reference, self.reply_to = self.reply_to, None
        try:
            sent = await self.channel.send(
                text, allowed_mentions=NO_PINGS, reference=reference, mention_author=False
            )
        except discord.HTTPException:
            if reference is None:
                raise
            self.reply_to = reference  # try again next time
            raise
        self._sent[str(sent.id)] = sent
        return MessageRef(str(sent.id), str(self.channel.id))

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        await self._sent[ref.id].edit(content=text, allowed_mentions=NO_PINGS)

    async def delete(self, ref: MessageRef) -> None:
        await self._sent.pop(ref.id).delete()

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The CDN link needs no token: none is sent."""
        return await self.fetcher.get(attachment.handle, max_bytes=max_bytes)

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        """The file with its caption, replying to the question (a text answer's first part
        after it then does not reply again); a question deleted meanwhile leaves a plain
        message rather than a failed upload."""
        pending, self.reply_to = self.reply_to, None
        question = self.question
        reference = question.to_reference(fail_if_not_exists=False) if question else None
        try:
            sent = await self.channel.send(
                content=caption_of(file), file=to_discord_file(file), allowed_mentions=NO_PINGS,
                reference=reference, mention_author=False,
            )  # fmt: skip
        except discord.HTTPException:
            self.reply_to = pending
            raise
        self._sent[str(sent.id)] = sent
        return MessageRef(str(sent.id), str(self.channel.id))

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        """The request with Approve and Deny, replying to the question as a file does."""
        pending, self.reply_to = self.reply_to, None
        question = self.question
        reference = question.to_reference(fail_if_not_exists=False) if question else None
        try:
            sent = await self.channel.send(
                fit(request.text), view=approval_view(request.id), allowed_mentions=NO_PINGS,
                reference=reference, mention_author=False,
            )  # fmt: skip
        except discord.HTTPException:
            self.reply_to = pending
            raise
        self._sent[str(sent.id)] = sent
        return MessageRef(str(sent.id), str(self.channel.id))


class Interaction(Protocol):
    """What `InteractionResponder` uses of a slash command's interaction: discord.py's own,
    or a worker's `ReplayedInteraction`."""

    @property
    def channel(self) -> Any: ...

    @property
    def followup(self) -> discord.Webhook: ...

    async def edit_original_response(self, *, content: str, allowed_mentions: Any) -> Any: ...

    async def delete_original_response(self) -> None: ...


class ReplayedInteraction:
    """A slash command's interaction in a process that did not receive it (a worker): its
    webhook, from the application id and the token (valid 15 minutes), and its channel."""

    def __init__(self, client: discord.Client, application_id: int, token: str,
                 channel: Any) -> None:  # fmt: skip
        self.followup = discord.Webhook.partial(application_id, token, client=client)
        self.channel = channel

    async def edit_original_response(self, *, content: str, allowed_mentions: Any) -> Any:
        return await self.followup.edit_message("@original", content=content,  # type: ignore[call-overload]
                                                allowed_mentions=allowed_mentions)  # fmt: skip

    async def delete_original_response(self) -> None:
        await self.followup.delete_message("@original")  # type: ignore[arg-type]


class InteractionResponder:
    """Answers a slash command: edits the deferred response, then follow-ups, then (after
    the token's lifetime) plain channel messages."""

    limit = LIMIT
    typing_interval = 0.0  # the deferred response already shows "thinking…"

    def measure(self, text: str) -> int:
        """Discord counts the characters of the content (Markdown it renders itself)."""
        return len(text)

    def __init__(
        self,
        interaction: Interaction,
        *,
        edit_interval: float,
        expiry: float,
        fetcher: FileFetcher,
    ) -> None:
        self.interaction = interaction
        self.edit_interval = edit_interval
        self._deadline = time.monotonic() + expiry
        self._original_used = False
        self._sent: dict[str, Any] = {}
        self._channel = ChannelResponder(interaction.channel, reply_to=None,
                                         edit_interval=edit_interval,
                                         fetcher=fetcher)  # fmt: skip

    def _expired(self) -> bool:
        return time.monotonic() > self._deadline

    async def typing(self) -> None:
        return None

    async def send(self, text: str, *, final: bool) -> MessageRef:
        if self._expired():
            return await self._channel.send(text, final=final)
        if not self._original_used:
            self._original_used = True
            message = await self.interaction.edit_original_response(
                content=text, allowed_mentions=NO_PINGS
            )
            self._sent["@original"] = message
            return MessageRef("@original")
        followup = await self.interaction.followup.send(text, allowed_mentions=NO_PINGS, wait=True)
        self._sent[str(followup.id)] = followup
        return MessageRef(str(followup.id))

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        if ref.id in self._channel._sent:
            await self._channel.edit(ref, text, final=final)
        elif ref.id == "@original":
            await self.interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
        else:
            await self._sent[ref.id].edit(content=text, allowed_mentions=NO_PINGS)

    async def delete(self, ref: MessageRef) -> None:
        if ref.id in self._channel._sent:
            await self._channel.delete(ref)
        elif ref.id == "@original":
            await self.interaction.delete_original_response()
        else:
            await self._sent.pop(ref.id).delete()

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        return await self._channel.fetch(attachment, max_bytes)

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        """A follow-up carrying the file. The first follow-up after a deferral takes the
        place of the "thinking…" response, so text after it goes to follow-ups too."""
        if self._expired():
            return await self._channel.send_file(file)
        followup = await self.interaction.followup.send(
            content=caption_of(file), file=to_discord_file(file),
            allowed_mentions=NO_PINGS, wait=True,
        )  # fmt: skip
        self._original_used = True
        self._sent[str(followup.id)] = followup
        return MessageRef(str(followup.id))

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        """The request with Approve and Deny as a follow-up (the first one after a deferral
        takes the place of "thinking…"); in the channel once the token has expired."""
        if self._expired():
            return await self._channel.ask_approval(request)
        followup = await self.interaction.followup.send(
            fit(request.text), view=approval_view(request.id),
            allowed_mentions=NO_PINGS, wait=True,
        )  # fmt: skip
        self._original_used = True
        self._sent[str(followup.id)] = followup
        return MessageRef(str(followup.id))
