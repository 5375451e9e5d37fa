"""The built-in commands: /help, /reset, /persona, /model, /usage, the plugins' commands,
and the unknown-command answer."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Container, Iterable, Sequence

from core.config import Settings
from core.model import ContextKey, Message
from core.plugins import PluginCommand, Plugins
from core.policies.usage import UsageBook
from core.protocols import Handler, Responder
from core.routing.router import Route, any_command, command
from core.sections import IntentSettings
from core.storage import Store
from core.streaming.reply import reply

log = logging.getLogger(__name__)

STORE_DOWN = "Sorry, I can't save that right now (my memory store is unavailable). Try again soon."
ADMINS_ONLY = "Only admins can set this channel's default {what}."


class BuiltinCommands:
    """Commands every platform offers; `routes()` puts them in the routing table."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        usage: UsageBook | None = None,
        plugins: Plugins | None = None,
        intents: Sequence[IntentSettings] = (),
        tools: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.settings = settings
        self.usage_book = usage
        self.plugins = plugins or Plugins()
        self.intents = list(intents)
        self.tools = list(tools)
        self.extra_help: list[tuple[str, str]] = []  # (usage, what) added by plugins
        for name, cmd in self.plugins.commands.items():
            self.extra_help.append((f"/{name}", cmd.help or f"from {cmd.plugin}"))

    def routes(self) -> list[Route]:
        routes = [
            Route("help", command("help", "start"), self.help),
            Route("reset", command("reset"), self.reset),
            Route("persona", command("persona"), self.persona),
            Route("model", command("model"), self.model),
            Route("usage", command("usage"), self.usage),
            Route("voice", command("voice"), self.voice),
        ]
        for name, cmd in self.plugins.commands.items():
            routes.append(Route(f"plugin:{name}", command(name), _plugin_handler(cmd)))
        return routes

    def is_admin(self, message: Message) -> bool:
        """From the adapter, or the platform's `admins` list in config."""
        admins = self.settings.platforms.get(message.platform).admins
        return message.user.is_admin or message.user.id in admins

    def unknown_route(self) -> Route:
        """Goes after every other command route: any command left is unknown."""
        return Route("unknown-command", any_command, self.unknown)

    def _key(self, message: Message) -> ContextKey:
        return message.key.scoped(self.settings.scope(message.platform))

    async def help(self, message: Message, responder: Responder) -> None:
        lines = [
            "I answer questions with a language model and remember this conversation.",
            "",
            "*Commands*",
            "• `/ask <question>`: ask me something",
            "• `/reset`: forget this conversation",
            f"• `/persona <name>`: change my persona ({', '.join(self.settings.personas)})",
            f"• `/model <name>`: change the model ({', '.join(self.settings.llm.models)})",
            "• `/usage`: your token usage today and this month",
            "• `/image <description>`: draw a picture",
            "• `/voice on|off`: answers in this conversation also come as speech",
            "• `/mydata`: everything I keep about you, `/mydata erase` to delete it (in a DM)",
            "• `/help`: this message",
        ]
        lines += [f"• `{usage}`: {what}" for usage, what in self.extra_help]
        if self.is_admin(message):
            lines.append(
                "• `/persona default <name>`, `/model default <name>`: this channel's defaults "
                "(admins)"
            )
        if self.intents:
            lines += ["", "*I also understand*"]
            lines += [f"• {i.description or i.name.replace('_', ' ')}" for i in self.intents]
        if self.tools:
            lines += ["", f"*Tools I can use*: {', '.join(self.tools)}"]
        if message.command is not None and message.command.name == "start":
            greeting = getattr(self.settings.platforms.get(message.platform), "greeting", "")
            if greeting:
                lines = [greeting, "", *lines]
        await reply(responder, "\n".join(lines))

    async def reset(self, message: Message, responder: Responder) -> None:
        try:
            await self.store.reset(self._key(message))
        except Exception:
            await reply(responder, STORE_DOWN)
            return
        await reply(responder, "Done: I've forgotten this conversation. What's next?")

    async def persona(self, message: Message, responder: Responder) -> None:
        personas = self.settings.personas
        words = (message.command.args if message.command else "").lower().split()
        if len(words) == 2 and words[0] == "default":
            await self._channel_default(message, responder, "persona", words[1], list(personas))
            return
        wanted = " ".join(words)
        if not wanted:
            conversation = await self.store.load(self._key(message), channel=message.key)
            current = _first(conversation.persona, conversation.channel_persona, personas)
            current = current or self.settings.default_persona
            await reply(responder, f"Persona: *{current}*. Available: {_listing(personas)}.")
            return
        if wanted not in personas:
            await reply(
                responder, f"I don't know the persona `{wanted}`. Try: {_listing(personas)}."
            )
            return
        if not await self._save(message, responder, "persona", wanted):
            return
        await reply(responder, f"Persona set to *{wanted}* for this conversation.")

    async def model(self, message: Message, responder: Responder) -> None:
        models = self.settings.llm.models
        words = (message.command.args if message.command else "").split()
        if len(words) == 2 and words[0].lower() == "default":
            await self._channel_default(message, responder, "model", words[1], models)
            return
        wanted = " ".join(words)
        if not wanted:
            conversation = await self.store.load(self._key(message), channel=message.key)
            current = _first(conversation.model, conversation.channel_model, models)
            current = current or self.settings.llm.model
            await reply(responder, f"Model: *{current}*. Available: {_listing(models)}.")
            return
        if wanted not in models:
            await reply(responder, f"`{wanted}` is not an allowed model. Try: {_listing(models)}.")
            return
        if not await self._save(message, responder, "model", wanted):
            return
        await reply(responder, f"Model set to *{wanted}* for this conversation.")

    async def _channel_default(
        self, message: Message, responder: Responder, what: str, wanted: str, allowed: list[str]
    ) -> None:
        if not self.is_admin(message):
            await reply(responder, ADMINS_ONLY.format(what=what))
            return
        if wanted not in allowed:
            await reply(responder, f"`{wanted}` is not a {what} I know. Try: {_listing(allowed)}.")
            return
        try:
            await self.store.set_channel_setting(message.key, what, wanted)
        except Exception:
            await reply(responder, STORE_DOWN)
            return
        await reply(
            responder,
            f"This channel's default {what} is now *{wanted}* "
            f"(conversations that chose their own {what} keep it).",
        )

    async def voice(self, message: Message, responder: Responder) -> None:
        wanted = (message.command.args if message.command else "").strip().lower()
        if wanted not in ("on", "off"):
            conversation = await self.store.load(self._key(message))
            now = "on" if conversation.voice else "off"
            await reply(responder, f"Spoken answers are *{now}*. Send `/voice on` or `/voice off`.")
            return
        if not await self._save(message, responder, "voice", "on" if wanted == "on" else ""):
            return
        if wanted == "on":
            await reply(responder, "Spoken answers are *on*: each answer also comes as audio.")
        else:
            await reply(responder, "Spoken answers are *off*.")

    async def usage(self, message: Message, responder: Responder) -> None:
        if self.usage_book is None:
            await reply(responder, "Usage is not recorded on this bot.")
            return
        today, month = await self.usage_book.report(self.store, message)
        lines = [
            f"*Your usage* ({self.usage_book.timezone} days)",
            f"• Today: {today.total:,} tokens ({today.prompt:,} prompt, "
            f"{today.completion:,} answer)",
            f"• This month: {month.total:,} tokens ({month.prompt:,} prompt, "
            f"{month.completion:,} answer)",
        ]
        if month.images:
            lines.append(f"• Pictures drawn: {today.images} today, {month.images} this month")
        daily = self.settings.limits.daily_tokens
        if daily:
            left = max(daily - today.total, 0)
            lines.append(f"• Daily budget: {daily:,} tokens, {left:,} left today")
        await reply(responder, "\n".join(lines))

    async def unknown(self, message: Message, responder: Responder) -> None:
        name = message.command.name if message.command else ""
        await reply(
            responder, f"I don't know the command `/{name}`. Send /help to see what I can do."
        )

    async def _save(self, message: Message, responder: Responder, name: str, value: str) -> bool:
        try:
            await self.store.set_setting(self._key(message), name, value)
        except Exception:
            await reply(responder, STORE_DOWN)
            return False
        return True


def _plugin_handler(cmd: PluginCommand) -> Handler:
    """A plugin command as a Handler: its returned text is the reply; a failure, an apology."""

    async def handle(message: Message, responder: Responder) -> None:
        try:
            result = cmd.run(message)
            text = await result if inspect.isawaitable(result) else result
        except Exception:
            log.exception("plugin command /%s failed", cmd.name)
            text = f"Sorry, /{cmd.name} failed. Please try again."
        await reply(responder, str(text) if text else f"/{cmd.name} had nothing to say.")

    return handle


def _first(own: str, channel: str, allowed: Container[str]) -> str:
    """The conversation's own choice, else the channel's default, when still allowed."""
    return next((name for name in (own, channel) if name and name in allowed), "")


def _listing(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)
