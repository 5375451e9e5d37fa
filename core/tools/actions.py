"""HTTP actions: the bot POSTs JSON to a URL from config and uses the JSON it gets back.

The request body is `{intent, entities, text, conversation, user}` whether the action
answers a matched intent or a model's tool call (then `intent` is the action's name and
`entities` the model's arguments), so one action server can serve both.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from core.sections import ActionSettings
from core.tools.toolbox import Tool, ToolContext, ToolError

log = logging.getLogger(__name__)


class ActionError(Exception):
    """The action failed (timeout, HTTP error, bad JSON); the message is safe to show a model."""


class HttpActions:
    """Calls the configured actions through one shared httpx client."""

    def __init__(self, client: httpx.AsyncClient, actions: Mapping[str, ActionSettings]) -> None:
        self.client = client
        self.actions = dict(actions)

    async def call(self, name: str, payload: Mapping[str, Any]) -> Any:
        """The action's decoded JSON answer, or ActionError."""
        action = self.actions.get(name)
        if action is None:
            raise ActionError(f"no action named {name!r}")
        try:
            async with asyncio.timeout(action.timeout):
                response = await self.client.post(action.url, json=dict(payload))
        except TimeoutError:
            log.warning("action %s timed out after %ss", name, action.timeout)
            raise ActionError(f"no answer within {action.timeout:g} seconds") from None
        except httpx.HTTPError as exc:
            log.warning("action %s unreachable: %s", name, type(exc).__name__)
            raise ActionError(f"the action is unreachable ({type(exc).__name__})") from None
        if response.status_code >= 400:
            log.warning("action %s answered HTTP %d", name, response.status_code)
            raise ActionError(f"the action answered HTTP {response.status_code}")
        try:
            return response.json()
        except (ValueError, json.JSONDecodeError):
            log.warning("action %s answered something that is not JSON", name)
            raise ActionError("the action's answer is not JSON") from None

    async def reply_text(self, name: str, payload: Mapping[str, Any]) -> str:
        """The action's answer as a chat reply: `{"text": "..."}` or a JSON string."""
        answer = await self.call(name, payload)
        if isinstance(answer, dict) and isinstance(answer.get("text"), str) and answer["text"]:
            return str(answer["text"])
        if isinstance(answer, str) and answer:
            return answer
        raise ActionError('the action\'s answer has no "text"')

    def tool(self, name: str) -> Tool:
        """The action offered to the model; its arguments become the request's entities."""
        action = self.actions[name]
        assert action.parameters is not None, "checked when the settings were loaded"

        async def run(arguments: dict[str, Any], context: ToolContext) -> Any:
            payload = action_payload(name, arguments, context.message.text, context)
            try:
                return await self.call(name, payload)
            except ActionError as exc:
                raise ToolError(str(exc)) from None

        return Tool(name, action.description or name, action.parameters, run, action.timeout)


def action_payload(
    intent: str, entities: Mapping[str, Any], text: str, context: ToolContext
) -> dict[str, Any]:
    """The JSON body every action receives."""
    user = context.message.user
    return {
        "intent": intent,
        "entities": dict(entities),
        "text": text,
        "conversation": context.conversation,
        "user": {"id": user.id, "name": user.name, "platform": context.message.platform},
    }
