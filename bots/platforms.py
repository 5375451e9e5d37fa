"""Which adapters run: every enabled platform whose credentials are in the environment.

Each platform's block builds its adapter from the core and the secrets; adapters import
their SDK lazily here so a missing optional platform never slows the others' start.
"""

from __future__ import annotations

import logging

from pydantic import SecretStr

from adapters.base import Adapter
from bots.assembly import Core
from core.protocols import Handler

log = logging.getLogger(__name__)


def build_adapters(
    core: Core, *, web_local: bool = False, handler: Handler | None = None, web: bool = True
) -> list[Adapter]:
    """The adapters to run, in start order. `web_local` (`chatbot web`): the web channel
    alone, for the one local user (without a token unless `WEB_JWT_SECRET` is set).
    `handler`: what the adapters call (the core's, unless the ingress's, which returns once
    the message is appended: Slack and Telegram are then acknowledged after it); `web`: whether the
    web channel runs here (its answers stream over the client's own connection, so it runs
    in `--role all` processes only)."""
    adapters: list[Adapter] = []
    handler = handler or core.handler
    secrets, settings = core.secrets, core.settings
    if web_local:
        from adapters.web import WebAdapter

        secret = _reveal(secrets.web_jwt_secret) or None  # empty: unset
        return [
            WebAdapter(
                handler,
                core.store,
                settings,
                jwt_secret=secret,
                on_decision=core.chat.decide,
            )
        ]
    # --- slack ---
    if (
        settings.platforms.slack.enabled
        and secrets.slack_bot_token
        and (secrets.slack_signing_secret or secrets.slack_app_token)
    ):
        from adapters.slack import SlackAdapter

        adapters.append(
            SlackAdapter(
                handler,
                settings,
                bot_token=secrets.slack_bot_token.get_secret_value(),
                signing_secret=_reveal(secrets.slack_signing_secret),
                app_token=_reveal(secrets.slack_app_token),
                api_url=secrets.slack_api_url,
                on_decision=core.chat.decide,
                ack_after_handling=handler is not core.handler,
            )
        )
    # --- telegram ---
    if settings.platforms.telegram.enabled and secrets.telegram_bot_token:
        from adapters.telegram import TelegramAdapter

        adapters.append(
            TelegramAdapter(
                handler,
                settings,
                token=secrets.telegram_bot_token.get_secret_value(),
                api_url=secrets.telegram_api_url,
                webhook_url=secrets.telegram_webhook_url,
                webhook_secret=_reveal(secrets.telegram_webhook_secret),
                on_intake_restart=core.metrics.intake_restart,
                on_decision=core.chat.decide,
                ack_after_handling=handler is not core.handler,
            )
        )
    # --- discord ---
    if settings.platforms.discord.enabled and secrets.discord_bot_token:
        from adapters.discord import DiscordAdapter

        adapters.append(
            DiscordAdapter(
                handler,
                core.store,
                settings,
                token=secrets.discord_bot_token.get_secret_value(),
                api_url=secrets.discord_api_url,
                gateway_url=secrets.discord_gateway_url,
                on_intake_restart=core.metrics.intake_restart,
                on_decision=core.chat.decide,
            )
        )
    # --- web ---
    if web and settings.platforms.web.enabled and secrets.web_jwt_secret:  # set and not empty
        from adapters.web import WebAdapter

        if len(secrets.web_jwt_secret.get_secret_value()) < 32:
            log.warning("WEB_JWT_SECRET is shorter than 32 bytes: tokens are easier to forge")
        adapters.append(
            WebAdapter(
                handler,
                core.store,
                settings,
                jwt_secret=secrets.web_jwt_secret.get_secret_value(),
                on_decision=core.chat.decide,
            )
        )
    return adapters


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret else None
