"""Slack files: fetched with the bot token, posted with `files_upload_v2`.

An event's `files` (read by `slack_events.attachments_of`) describe each file; its bytes are
at `url_private_download` (or `url_private`) on files.slack.com, readable with
`Authorization: Bearer <bot token>` and the `files:read` scope. Without that scope Slack does
not refuse: it answers 200 with its sign-in page, so an HTML body where a file was expected is
a failure too. Posting uses the SDK's `files_upload_v2`: `files.getUploadURLExternal`, a POST
of the bytes to the URL it gives, `files.completeUploadExternal` into the channel and thread.
https://docs.slack.dev/messaging/working-with-files
"""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from adapters.file_fetch import FileFetcher, host_of
from adapters.slack_format import to_mrkdwn
from core.model import Attachment, MessageRef, OutgoingFile
from core.protocols import FetchError

FILE_HOSTS = ("files.slack.com",)
_HTML_STARTS = (b"<!doctype html", b"<html")


def _looks_like_html(data: bytes) -> bool:
    return data[:512].lstrip().lower().startswith(_HTML_STARTS)


class SlackFiles:
    """Downloads and uploads for every responder of one adapter (one fetcher, one session)."""

    def __init__(self, client: AsyncWebClient, *, api_url: str | None) -> None:
        self.client = client
        # the configured API's host (a self-hosted proxy, a test's fake) serves files too
        self._fetcher = FileFetcher(FILE_HOSTS, trusted=(host_of(api_url),) if api_url else ())

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The file's bytes, read with the bot token from Slack's file host only."""
        if not attachment.handle:
            raise FetchError("Slack did not share this file with the bot")
        data = await self._fetcher.get(
            attachment.handle,
            max_bytes=max_bytes,
            headers={"Authorization": f"Bearer {self.client.token}"},
        )
        if _looks_like_html(data) and "html" not in attachment.mime_type.lower():
            raise FetchError("Slack sent its sign-in page, not the file (is files:read granted?)")
        return data

    async def upload(
        self, file: OutgoingFile, *, channel: str, thread_ts: str | None
    ) -> MessageRef:
        """Post `file` into the channel (and thread), its caption as the message beside it."""
        response = await self.client.files_upload_v2(
            file=file.data,
            filename=file.name,
            title=file.name,
            channel=channel,
            thread_ts=thread_ts or None,
            initial_comment=to_mrkdwn(file.caption) if file.caption.strip() else None,
        )
        posted = response.get("file") or {}
        return MessageRef(str(posted.get("id", "")), channel)

    async def dm_with(self, user: str) -> str:
        """The bot's DM channel with `user` (opened if needed; needs the im:write scope)."""
        opened = await self.client.conversations_open(users=user)
        return str(opened["channel"]["id"])

    async def close(self) -> None:
        await self._fetcher.close()
