"""A plugin that fails to import, to see the start refuse it clearly."""

from __future__ import annotations

import this_module_does_not_exist  # noqa: F401


def setup(bot: object) -> None:  # pragma: no cover - never reached
    pass
