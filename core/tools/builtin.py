"""The two built-in tools, off by default (`tools.enabled: [current_time, calculator]`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.tools.calculator import CalcError, calculate, format_number
from core.tools.toolbox import Tool, ToolContext, ToolError


def current_time_tool(default_zone: str) -> Tool:
    """The current date and time in an IANA time zone."""

    async def run(arguments: dict[str, Any], context: ToolContext) -> dict[str, str]:
        name = str(arguments.get("timezone") or default_zone)
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {name!r}; use an IANA name") from None
        now = datetime.now(zone)
        return {
            "timezone": name,
            "iso": now.isoformat(timespec="seconds"),
            "date": now.strftime("%Y-%m-%d"),
            "time": now.strftime("%H:%M"),
            "weekday": now.strftime("%A"),
            "utc_offset": now.strftime("%z"),
        }

    schema = {
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": f"IANA time zone, e.g. Europe/Paris (default {default_zone})",
            }
        },
        "required": [],
    }
    return Tool("current_time", "The current date, time and weekday in a time zone.", schema, run)


def calculator_tool() -> Tool:
    """Exact arithmetic, so the model need not do sums in its head."""

    async def run(arguments: dict[str, Any], context: ToolContext) -> dict[str, str]:
        expression = str(arguments.get("expression", ""))
        try:
            value = calculate(expression)
        except CalcError as exc:
            raise ToolError(f"cannot calculate {expression!r}: {exc}") from None
        return {"expression": expression, "result": format_number(value)}

    schema = {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "arithmetic: + - * / // % ** ( ), pi, e, sqrt, log, sin, round",
            }
        },
        "required": ["expression"],
    }
    return Tool("calculator", "Evaluate an arithmetic expression exactly.", schema, run)
