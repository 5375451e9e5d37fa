"""Which adapters run: every enabled platform whose credentials are in the environment.

Each platform's block builds its adapter from the core and the secrets; adapters import
their SDK lazily here so a missing optional platform never slows the others' start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.base import Adapter

if TYPE_CHECKING:
    from bots.app import Core


def build_adapters(core: Core) -> list[Adapter]:
    """The adapters to run, in start order."""
    adapters: list[Adapter] = []
    # --- slack ---
    # --- telegram ---
    secrets, settings = core.secrets, core.settings
    if settings.platforms.telegram.enabled and secrets.telegram_bot_token:
        from adapters.telegram import TelegramAdapter

        adapters.append(
            TelegramAdapter(
                core.handler,
                core.store,
                settings,
                token=secrets.telegram_bot_token.get_secret_value(),
                api_url=secrets.telegram_api_url,
                webhook_url=secrets.telegram_webhook_url,
                webhook_secret=(
                    secrets.telegram_webhook_secret.get_secret_value()
                    if secrets.telegram_webhook_secret
                    else None
                ),
            )
        )
    # --- discord ---
    return adapters
