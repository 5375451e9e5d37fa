"""Config sections of the conversation-intelligence features (see docs/features.md):
intents, HTTP actions, tools, plugins, long memory, limits, moderation, cache, privacy.

Kept apart from `core/config.py` so each stays small; `Settings` gathers them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_TOOLS = ("current_time", "calculator", "generate_image", "fetch_url", "web_search")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name: Europe/Paris)") from None
    return name


class ActionSettings(_Section):
    """An HTTP action: the bot POSTs `{intent, entities, text, conversation, user}` as JSON.

    Its JSON answer `{"text": "..."}` is the reply to an intent; offered as a tool, the whole
    JSON answer goes back to the model.
    """

    url: str
    timeout: float = Field(5.0, gt=0, le=120, description="seconds for the whole call")
    description: str = Field("", description="what it does, for the model when it is a tool")
    parameters: dict[str, Any] | None = Field(
        None, description="JSON schema of its entities, needed to offer it as a tool"
    )
    approve: bool = Field(False, description="as a tool, it runs only after a person approves")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("must be an http:// or https:// URL")
        return url


class IntentSettings(_Section):
    """A configured intent: patterns or keywords, and exactly one kind of response."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = Field("", description="shown by /help")
    patterns: list[str] = Field(
        default_factory=list, description="regular expressions; named groups become entities"
    )
    keywords: list[str] = Field(
        default_factory=list, description="words or phrases; any one, as whole words, matches"
    )
    template: str | None = Field(None, description="a reply with {entity} placeholders")
    action: str | None = Field(None, description="the name of an HTTP action under `actions`")
    handler: str | None = Field(None, description="the name of a plugin's intent handler")
    cache: bool = Field(False, description="its answers may come from the cache (cache.enabled)")

    @model_validator(mode="after")
    def _one_response(self) -> IntentSettings:
        given = [k for k in ("template", "action", "handler") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of template, action or handler")
        if not self.patterns and not self.keywords:
            raise ValueError("give patterns or keywords")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regex: {exc}") from None
        return self


class FetchSettings(_Section):
    """The `fetch_url` tool: a web page's readable text, bounded, never a private address."""

    max_bytes: int = Field(2_000_000, gt=0, description="a larger page is cut here")
    max_chars: int = Field(
        7_000,
        gt=0,
        description="the text the model gets is cut here (keep it under 8,000: a longer tool "
        "result is cut by the toolbox, mid-JSON)",
    )
    timeout: float = Field(15.0, gt=0, description="seconds for the whole fetch")
    allow_private: bool = Field(
        False, description="fetch private and loopback addresses too (tests, an intranet)"
    )


class SearchSettings(_Section):
    """The `web_search` tool's provider."""

    provider: Literal["searxng", "brave"] = "searxng"
    url: str | None = Field(
        None, description="searxng: the instance's base URL (its JSON format enabled)"
    )
    max_results: int = Field(5, ge=1, le=20)
    timeout: float = Field(10.0, gt=0)


class ToolsSettings(_Section):
    """Function calling: which tools the model may use, and the loop's bounds."""

    enabled: list[str] = Field(
        default_factory=list,
        description="action names, plugin tool names, MCP tools (`<server>__<tool>`, "
        "`<server>__*`), built-ins: current_time, calculator, generate_image, fetch_url, "
        "web_search",
    )
    max_steps: int = Field(4, ge=1, le=20, description="tool rounds per turn")
    timeout: float = Field(10.0, gt=0, description="seconds per tool call")
    timezone: str = Field("UTC", description="current_time's zone when the model gives none")
    approve: list[str] = Field(
        default_factory=list,
        description="tools (names or patterns such as `github__create_*`) that run only after "
        "the person who asked approves, in the chat",
    )
    approval_ttl: float = Field(
        600.0, gt=0, description="seconds an approval waits for its decision"
    )
    fetch: FetchSettings = FetchSettings()
    search: SearchSettings = SearchSettings()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        return _check_timezone(name)


DEFAULT_SUMMARY_PROMPT = (
    "You keep the memory of a chat. Rewrite the summary so it also covers the new messages: "
    "keep names, facts, decisions, preferences and open questions; drop small talk. Write at "
    "most {words} words, in the conversation's language, as plain sentences."
)


class MemorySettings(_Section):
    """Long memory: fold the oldest turns into a running summary instead of dropping them."""

    summarize: bool = True
    keep_tokens: int | None = Field(
        None, gt=0, description="recent history kept word for word (default: half the budget)"
    )
    summary_words: int = Field(150, gt=0, le=2000)
    model: str | None = Field(None, description="the summariser's model (default: the turn's)")
    timeout: float = Field(60.0, gt=0, description="seconds for the summary call")
    prompt: str = DEFAULT_SUMMARY_PROMPT


class LimitsSettings(_Section):
    """Per-user rate limit and daily token budget (0 turns each off); answers in flight."""

    max_in_flight: int = Field(
        1000,
        ge=0,
        description="answers written at once per process, every platform together; more wait "
        "(in order, seen in /metrics). 0: no bound",
    )
    messages_per_minute: float = Field(0, ge=0, description="a token bucket shared in Redis")
    burst: int | None = Field(None, gt=0, description="bucket size (default: per minute)")
    daily_tokens: int = Field(0, ge=0, description="per user and day; 0: no budget")
    timezone: str = Field("UTC", description="when a day and a month start, for budgets")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        return _check_timezone(name)


class ModerationSettings(_Section):
    """The user's text is checked by the moderations endpoint before the chat call."""

    enabled: bool = False
    model: str = "omni-moderation-latest"
    on_error: Literal["allow", "refuse"] = Field(
        "allow", description="an outage fails open (allow) or closed (refuse)"
    )
    timeout: float = Field(5.0, gt=0)


class CacheSettings(_Section):
    """Answers served from Redis: intent answers, and first turns (never with history)."""

    enabled: bool = False
    ttl_seconds: int = Field(3600, gt=0)
    first_turn: bool = Field(True, description="cache the model's answer to a first message")


MaskKind = Literal["email", "phone", "card", "iban", "secret"]
MASK_KINDS: tuple[MaskKind, ...] = get_args(MaskKind)
_PATTERN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class PrivacySettings(_Section):
    """Sensitive data in a user's message is replaced by placeholders (`<EMAIL_1>`) before the
    text reaches the model, the history, the cache and the logs (core/policies/masking.py)."""

    mask: list[MaskKind] = Field(
        default_factory=list, description="built-in kinds to mask; empty: masking off"
    )
    patterns: dict[str, str] = Field(
        default_factory=dict,
        description="the operator's own kinds: name -> regex; matches become <NAME_n>",
    )
    phone_region: str | None = Field(
        None,
        description="region of numbers written without + (DE, US, ...); None: only +numbers",
    )
    profile_ttl_days: int = Field(
        70,
        ge=31,
        description="days a user's monthly usage and a channel's defaults are kept after their "
        "last change (at least a month: the monthly budget needs it)",
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            if not _PATTERN_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r}: a name is a letter, then letters, digits or _ (it becomes the "
                    "placeholder <NAME_n>)"
                )
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name}: {pattern!r} is not a valid regex: {exc}") from None
            if compiled.fullmatch(""):
                raise ValueError(f"{name}: {pattern!r} matches the empty text")
        return patterns

    @field_validator("phone_region")
    @classmethod
    def _region(cls, region: str | None) -> str | None:
        if region is None:
            return None
        import phonenumbers  # only when set: the config stays light to import

        code = region.strip().upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region code phonenumbers knows (DE, US, FR...)")
        return code


def check_references(
    actions: dict[str, ActionSettings], intents: list[IntentSettings], tools: ToolsSettings
) -> None:
    """Cross-section checks that need no plugin: intents name real actions, names are unique."""
    seen: set[str] = set()
    for intent in intents:
        if intent.name in seen:
            raise ValueError(f"intents: the name {intent.name!r} is used twice")
        seen.add(intent.name)
        if intent.action and intent.action not in actions:
            raise ValueError(
                f"intents: {intent.name!r} names the action {intent.action!r}, which is not "
                f"under actions ({', '.join(sorted(actions)) or 'none'})"
            )
    for name in tools.enabled:
        action = actions.get(name)
        if action is not None and action.parameters is None:
            raise ValueError(
                f"tools.enabled: the action {name!r} needs `parameters` (a JSON schema) "
                "to be offered to the model"
            )


class MediaSettings(_Section):
    """Files people send and the bot posts: images, voice, documents (core/media/)."""

    enabled: bool = Field(True, description="False: files are only named to the model")
    max_bytes: int = Field(20_000_000, gt=0, description="a larger file is refused, unread")
    max_pages: int = Field(50, gt=0, description="PDF pages read; the rest are left out")
    image_side: int = Field(
        1536, ge=256, le=4096, description="images are scaled down to this longest side"
    )
    image_size: str = Field(
        "1024x1024", pattern=r"^(\d+x\d+|auto)$", description="/image's picture size"
    )
    history_images: int = Field(
        4, ge=0, le=20, description="recent images the model sees again in follow-up turns"
    )
    image_ttl_hours: float = Field(
        24, gt=0, description="hours an image is kept for follow-up questions"
    )
    document_tokens: int | None = Field(
        None,
        gt=0,
        description="a document's text is cut to this many tokens, with a note (None: half "
        "of context.token_budget, so it stays in the prompt for follow-up questions)",
    )
    tts_voice: str = Field("alloy", description="the voice of spoken answers (/voice on)")
    max_speech_chars: int = Field(
        4000, gt=0, le=4096, description="a spoken answer's text is cut here (the API's limit)"
    )


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MCPServerSettings(_Section):
    """One MCP server: a command the bot starts (stdio) or a Streamable HTTP URL.

    Values of `env` and `headers` may name environment variables as `${NAME}` (secrets stay
    in the environment, never in the file)."""

    command: str | None = Field(None, description="a stdio server: the program to start")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(
        default_factory=dict, description="the server's environment (`${NAME}` from ours)"
    )
    url: str | None = Field(None, description="a Streamable HTTP server's endpoint")
    headers: dict[str, str] = Field(
        default_factory=dict, description="sent with each request (`${NAME}` from our environment)"
    )
    approve: bool = Field(False, description="every tool of this server needs approval")
    timeout: float | None = Field(None, gt=0, description="seconds per call (tools.timeout)")

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (a stdio server) or `url` (HTTP), not both")
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError("url: must be an http:// or https:// URL")
        return self


class MCPSettings(_Section):
    """MCP servers whose tools the model may use (`tools.enabled`: `<server>__*`)."""

    servers: dict[str, MCPServerSettings] = Field(default_factory=dict)
    restart_max: float = Field(
        60.0, gt=0, description="the longest wait between two restarts of a failed server"
    )
    start_timeout: float = Field(
        20.0, gt=0, description="seconds a server has to start and list its tools"
    )

    @field_validator("servers")
    @classmethod
    def _names(cls, servers: dict[str, MCPServerSettings]) -> dict[str, MCPServerSettings]:
        for name in servers:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name) or "__" in name:
                raise ValueError(
                    f"{name!r}: a server name is 1-32 letters, digits, _ or - without `__` "
                    "(its tools are offered as <server>__<tool>)"
                )
        return servers


def expand_env(value: str, environ: Mapping[str, str]) -> str:
    """`${NAME}` replaced by the variable's value; a missing one is an error naming it."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise KeyError(name)
        return environ[name]

    return _ENV_REFERENCE.sub(one, value)
