"""What every webhook shares: junk and forgeries get a 4xx and at most one short log line.

A webhook is open to the internet, so anyone can send it anything, as often as they like. A
refused request is never logged with its body (a newline in a form body forges log lines, 1 MB
bodies fill the disk, a stale genuine request carries a user's words) nor with a traceback,
and the one line it may get is rate-limited per reason, counting the lines it held back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A request a webhook will not handle: its status and a short reason that is safe to log
    (our words, never the request's)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ThrottledLog:
    """At most one warning per reason every `every` seconds; the next one says how many were
    held back. Reasons are our own fixed strings, so the table stays small."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, reason: str) -> None:
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.every:
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._last[reason] = now
        held = self._held.pop(reason, 0)
        self.logger.warning("%s%s", reason, f" (and {held} more since)" if held else "")


def guarded(name: str, handler: WebHandler, log: ThrottledLog) -> WebHandler:
    """`handler` behind the shared guard: `Refused` becomes its status, anything else an SDK
    raises on a request (bad JSON, RecursionError, UnicodeDecodeError, a shape it did not
    expect) becomes 400; each with one throttled line naming the reason, never the body."""

    async def guard(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as exc:
            log.warning(f"{name}: refused a request with {exc.status}: {exc.reason}")
            return web.Response(status=exc.status, text=exc.reason)
        except web.HTTPException:
            raise  # aiohttp's own answers (413 for a body over client_max_size)
        except Exception as exc:
            log.warning(f"{name}: refused a request the SDK could not read ({type(exc).__name__})")
            return web.Response(status=400, text="bad request")

    return guard


def json_object(text: str | bytes) -> dict[str, Any]:
    """The body as a JSON object, else `Refused(400)`: not UTF-8, not JSON, nested deeper than
    the parser's recursion limit, or JSON that is not an object."""
    try:
        data = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8") from None
    except RecursionError:
        raise Refused(400, "JSON nested too deep") from None
    except ValueError:
        raise Refused(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "body is not a JSON object")
    return data
