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
    # --- discord ---
    return adapters
