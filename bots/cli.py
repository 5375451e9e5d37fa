"""The `chatbot` command (also `python -m bots`).

    chatbot run  [--config PATH]   every platform with credentials, and the HTTP server
    chatbot chat [--config PATH]   a terminal conversation through the same core
    chatbot intents test "text"    which configured intent and entities a text gives
    chatbot migrate [--apply]      move what release 0.1 kept in Redis to the 0.2 key layout

Operator errors (bad config, no model configured, Redis unreachable, a token the platform
refuses) print one clear line and exit non-zero; they never print a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from dotenv import load_dotenv
from redis.exceptions import RedisError

from adapters.base import AdapterStartError
from bots.logs import setup_logging
from bots.redis_conn import RedisStartError
from core.config import ConfigError, Secrets, Settings, load_settings
from core.llm.openai_chat import MissingAPIKey
from core.model import parse_command
from core.plugins import PluginError

log = logging.getLogger("chatbot")

EXIT_CONFIG = 2
EXIT_START = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatbot", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run every platform whose credentials are set, and the HTTP server"),
        ("chat", "chat with the bot in this terminal"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
        if name == "run":
            sub.add_argument(
                "--role", choices=("all", "ingress", "worker"), default="all",
                help="all: take and answer messages (default); ingress: hold the platforms' "
                "connections and hand messages to workers over Redis Streams; worker: answer "
                "them",
            )  # fmt: skip
        if name == "chat":
            sub.add_argument(
                "--memory", action="store_true",
                help="keep the conversation in this process only: no Redis at all",
            )  # fmt: skip
    intents = commands.add_parser("intents", help="configured intents")
    actions = intents.add_subparsers(dest="action", required=True)
    test = actions.add_parser("test", help="print the intent and entities a text gives")
    test.add_argument("text", help="what a user might say")
    test.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
    web_cmd = commands.add_parser(
        "web", help="the chat page on this machine for you alone (http://127.0.0.1:PORT/)"
    )
    web_cmd.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
    web_cmd.add_argument("--host", default="127.0.0.1", help="where to listen (default: local)")
    web_cmd.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    token = commands.add_parser("token", help="print a web channel token (WEB_JWT_SECRET)")
    token.add_argument("user", help="the user id (the token's `sub`)")
    token.add_argument("--name", default="", help="a display name")
    token.add_argument("--ttl", default="1h", help="how long it is valid: 3600, 30m, 1h, 7d")
    token.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
    privacy = commands.add_parser("privacy", help="what the bot keeps about people")
    privacy_actions = privacy.add_subparsers(dest="action", required=True)
    privacy_report = privacy_actions.add_parser(
        "report", help="the kinds of data kept and for how long, from this configuration"
    )
    privacy_report.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
    for action, what in (
        ("export", "print everything kept about one person, as JSON"),
        ("erase", "delete everything one person left (their turns in shared conversations)"),
    ):
        sub = privacy_actions.add_parser(action, help=what)
        sub.add_argument("--platform", required=True, help="slack, telegram, discord, web, ...")
        sub.add_argument("--user", required=True, help="the person's user id on that platform")
        sub.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
        if action == "erase":
            sub.add_argument("--yes", action="store_true", help="really delete (required)")
    migrate = commands.add_parser(
        "migrate", help="move the Redis keys of release 0.1 to the 0.2 layout (a dry run unless "
        "--apply)"
    )  # fmt: skip
    migrate.add_argument("--apply", action="store_true", help="change Redis (default: dry run)")
    migrate.add_argument("--config", type=Path, help="config file (default: ./config.yaml)")
    return parser


def config_path(given: Path | None) -> Path | None:
    """The config file: --config, else $CHATBOT_CONFIG, else ./config.yaml when present."""
    if given is not None:
        return given
    if os.environ.get("CHATBOT_CONFIG"):
        return Path(os.environ["CHATBOT_CONFIG"])
    default = Path("config.yaml")
    return default if default.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    load_dotenv(Path.cwd() / ".env", override=False)
    try:
        settings = load_settings(config_path(args.config))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "intents":
        return intents_test(settings, args.text)
    if args.command == "privacy" and args.action == "report":
        from bots.privacy import report

        print(report(settings))
        return 0
    secrets = Secrets()
    level = settings.log_level if args.command in ("run", "web") else "WARNING"
    setup_logging(level, secrets.values(), fmt=settings.log_format)
    if args.command == "migrate":
        return _migrate_command(settings, secrets, apply=args.apply)
    if args.command == "privacy":
        return _privacy_command(settings, secrets, args)
    if args.command == "token":
        return print_token(secrets, args.user, name=args.name, ttl=args.ttl)
    try:
        if args.command == "chat":
            return asyncio.run(_chat(settings, secrets, memory=args.memory))
        if args.command == "web":
            settings, error = web_settings(settings, secrets, args.host, args.port)
            if error:
                print(f"error: {error}", file=sys.stderr)
                return EXIT_CONFIG
            return asyncio.run(_run(settings, secrets, web_local=True))
        return asyncio.run(_run(settings, secrets, role=args.role))
    except KeyboardInterrupt:
        return 0
    except (MissingAPIKey, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PluginError as exc:
        print(f"plugin error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (RedisStartError, AdapterStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_START


def intents_test(settings: Settings, text: str) -> int:
    """`chatbot intents test "text"`: 0 and the intent when one matches, else 1."""
    from core.plugins import load_plugins
    from core.routing.intents import IntentMatcher, gather_intents

    try:
        intents = gather_intents(settings, load_plugins(settings.plugins))
    except PluginError as exc:
        print(f"plugin error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    command = parse_command(text)
    if command is not None and command.name != "ask":
        print(f"command: /{command.name} (commands come before intents)")
        return 1
    if command is not None:
        text = command.args
    match = IntentMatcher(intents).match(text)
    if match is None:
        print("no intent: the chat model answers this")
        return 1
    intent = next(i for i in intents if i.name == match.intent)
    print(f"intent: {match.intent}")
    entities = ", ".join(f"{k}={v!r}" for k, v in match.entities.items())
    print(f"entities: {entities or '(none)'}")
    if intent.action:
        print(f"response: HTTP action {intent.action} ({settings.actions[intent.action].url})")
    elif intent.handler:
        print(f"response: plugin handler {intent.handler}")
    else:
        print(f"response: template {intent.template!r}")
    return 0


def _migrate_command(settings: Settings, secrets: Secrets, *, apply: bool) -> int:
    """`chatbot migrate [--apply]`: 0 when done, 1 when Redis cannot be reached or is lost."""
    try:
        return asyncio.run(_migrate(settings, secrets, apply=apply))
    except KeyboardInterrupt:
        print("interrupted: run it again to finish (nothing is counted twice)", file=sys.stderr)
        return EXIT_START
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RedisStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_START


async def _migrate(settings: Settings, secrets: Secrets, *, apply: bool) -> int:
    from redis.exceptions import RedisError

    from bots.migrate import migrate
    from bots.redis_conn import open_redis
    from stores.redis.keys import KeyBuilder

    prefix = settings.redis.key_prefix
    async with AsyncExitStack() as stack:
        redis, described = await open_redis(stack, settings, secrets)
        print(f"{'migrating' if apply else 'dry run of'} prefix {prefix!r} on {described}")
        try:
            report = await migrate(redis, KeyBuilder(prefix), apply=apply)
        except (RedisError, OSError) as exc:
            print(
                f"error: Redis failed during the migration ({type(exc).__name__}: {exc}); "
                "run it again to finish (nothing is counted twice)",
                file=sys.stderr,
            )
            return EXIT_START
    print(report)
    keys = _plural(report.usage_keys, "key")
    buckets = _plural(report.buckets_dropped, "rate-limit bucket")
    if apply:
        print(f"done: moved {keys}, dropped {buckets}")
    elif report.usage_keys or report.buckets_dropped:
        dropped = f" and drop {buckets}" if report.buckets_dropped else ""
        print(f"dry run: nothing changed; run with --apply to move {keys}{dropped}")
    else:
        print("dry run: nothing changed; nothing to migrate")
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _privacy_command(settings: Settings, secrets: Secrets, args: argparse.Namespace) -> int:
    """`chatbot privacy export|erase --platform P --user U`."""
    from bots import privacy
    from core.storage import Person

    person = Person(args.platform, args.user)
    try:
        if args.action == "export":
            print(asyncio.run(privacy.export(settings, secrets, person)))
            return 0
        if not args.yes:
            print(f"error: this deletes {args.user!r}'s data on {args.platform}: add --yes",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        erased = asyncio.run(privacy.erase(settings, secrets, person))
    except RedisStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_START
    except (RedisError, OSError) as exc:
        print(f"error: Redis failed ({type(exc).__name__}); run it again to finish",
              file=sys.stderr)  # fmt: skip
        return EXIT_START
    print(
        f"erased {args.user!r} on {args.platform}: {erased.conversations} own conversation(s), "
        f"{erased.turns} turn(s) from shared ones, {erased.usage} usage counter(s), "
        f"{erased.cached} cached answer(s)"
    )
    return 0


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def web_settings(
    settings: Settings, secrets: Secrets, host: str, port: int | None
) -> tuple[Settings, str]:
    """`chatbot web`'s server address; an error when it would open the page without a token
    to anyone but this machine."""
    if host not in LOOPBACK and not secrets.web_jwt_secret:  # unset or empty
        return settings, (
            f"chatbot web serves one local user without a token: it listens on {host} only "
            "with WEB_JWT_SECRET set (then every call needs a token: chatbot token USER)"
        )
    server = settings.server.model_copy(update={"host": host, "port": port or settings.server.port})
    return settings.model_copy(update={"server": server}), ""


def print_token(secrets: Secrets, user: str, *, name: str, ttl: str) -> int:
    """`chatbot token USER`: a web channel token signed with WEB_JWT_SECRET."""
    import jwt

    if not secrets.web_jwt_secret:
        print("error: WEB_JWT_SECRET is not set", file=sys.stderr)
        return EXIT_CONFIG
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        print(f"error: --ttl: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + seconds}
    if name:
        claims["name"] = name
    print(jwt.encode(claims, secrets.web_jwt_secret.get_secret_value(), algorithm="HS256"))
    return 0


def parse_ttl(text: str) -> int:
    """`3600`, `30m`, `1h`, `7d` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r} is not a duration like 3600, 30m, 1h or 7d")
    return int(number) * units[unit]


async def _run(
    settings: Settings, secrets: Secrets, *, web_local: bool = False, role: str = "all"
) -> int:
    from bots import taskdump
    from bots.app import BotApp, freeze_startup_objects

    # The signal handlers come first: a platform may answer before the others have started
    # (Discord's ready takes seconds), and a SIGTERM then must drain, not kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = BotApp(settings, secrets, web_local=web_local, role=role)
    starting = asyncio.create_task(app.start(), name="start")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stopped while starting; shutting down")
        starting.cancel()  # the start stops what it began and drains what it answers
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return 0
    stopping.cancel()
    starting.result()  # a failed start raises its error here (exit 1 or 2)
    freeze_startup_objects()
    taskdump.install(loop)
    log.info("chatbot running; SIGTERM or Ctrl-C to stop; SIGUSR1 logs what every task awaits")
    if web_local:
        host = settings.server.host
        shown = f"[{host}]" if ":" in host else host
        print(f"the chat page: http://{shown}:{app.port}/ (Ctrl-C to stop)", flush=True)
    await stop.wait()
    log.info("shutting down")
    await app.stop()
    return 0


async def _chat(settings: Settings, secrets: Secrets, *, memory: bool = False) -> int:
    from adapters.console import ConsoleChat, still_waiting
    from bots.assembly import build_core
    from bots.recovery import recover_orphans

    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, in_memory=memory)
        console = settings.platforms.console
        chat = ConsoleChat(
            core.handler,
            user=console.user,
            edit_interval=settings.edit_interval("console"),
            on_decision=core.chat.decide,  # y or n answers a tool's approval request
            waiting=await still_waiting(core.store, console.user),  # asked before a restart
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, chat.stop)
        if core.journal is not None:
            await core.journal.start()
            stack.push_async_callback(core.journal.stop)
            await recover_orphans(core, [chat])  # a killed earlier chat's unanswered message
        await chat.run()
        await core.inflight.drain(settings.server.shutdown_grace)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
