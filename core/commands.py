"""The built-in commands: /help, /reset, /persona, /model, and the unknown-command answer."""

from __future__ import annotations

from core.config import Settings
from core.model import ContextKey, Message
from core.protocols import Responder, Store
from core.router import Route, any_command, command
from core.streaming import reply

STORE_DOWN = "Sorry, I can't save that right now (my memory store is unavailable). Try again soon."


class BuiltinCommands:
    """Commands every platform offers; `routes()` puts them in the routing table."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.extra_help: list[tuple[str, str]] = []  # (usage, what) added by plugins

    def routes(self) -> list[Route]:
        return [
            Route("help", command("help", "start"), self.help),
            Route("reset", command("reset"), self.reset),
            Route("persona", command("persona"), self.persona),
            Route("model", command("model"), self.model),
        ]

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
            "• `/help`: this message",
        ]
        lines += [f"• `{usage}`: {what}" for usage, what in self.extra_help]
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
        wanted = message.command.args.strip().lower() if message.command else ""
        if not wanted:
            conversation = await self.store.load(self._key(message))
            current = conversation.persona or self.settings.default_persona
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
        wanted = message.command.args.strip() if message.command else ""
        if not wanted:
            conversation = await self.store.load(self._key(message))
            current = conversation.model or self.settings.llm.model
            await reply(responder, f"Model: *{current}*. Available: {_listing(models)}.")
            return
        if wanted not in models:
            await reply(responder, f"`{wanted}` is not an allowed model. Try: {_listing(models)}.")
            return
        if not await self._save(message, responder, "model", wanted):
            return
        await reply(responder, f"Model set to *{wanted}* for this conversation.")

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


def _listing(names: object) -> str:
    return ", ".join(f"`{name}`" for name in names)  # type: ignore[attr-defined]
