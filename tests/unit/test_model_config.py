"""The message model, commands, keys and config validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from core.conversation.prompt import build_prompt
from core.llm.tokens import TokenCounter, estimate_tokens
from core.model import Command, ContextKey, Scope, Turn, parse_command
from stores.redis.keys import KeyBuilder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/help", Command("help")),
        ("/persona pirate", Command("persona", "pirate")),
        ("/ask@ChatBot what is up", Command("ask", "what is up")),
        ("/ask@OtherBot hi", None),
        ("hello /help", None),
        ("/", None),
        ("/ with space", None),
    ],
)
def test_parse_command(text, expected):
    assert parse_command(text, bot_names=("ChatBot",)) == expected


def test_scopes_reduce_the_key():
    key = ContextKey("slack", channel="C1", user="U1", workspace="T1", thread="123.4")
    assert key.scoped(Scope.CHANNEL) == ContextKey("slack", "C1", "", "T1", "123.4")
    assert key.scoped(Scope.USER_IN_CHANNEL) == key
    assert key.scoped(Scope.USER) == ContextKey("slack", "", "U1", "T1", "")


def test_keys_share_a_hash_tag_and_escape_parts():
    keys = KeyBuilder("p")
    key = ContextKey("slack", channel="C:1", user="U 1")
    assert keys.history(key) == "p:conv:{slack:-:C%3A1:-:U%201}:history"
    assert keys.meta(key).split(":meta")[0] == keys.history(key).split(":history")[0]
    # a user's day and month counters share the user's tag: one Cluster slot, one script
    day, month = keys.user_usage("slack", "U:1", "d1"), keys.user_usage("slack", "U:1", "m1")
    assert day == "p:usage:{slack:U%3A1}:d1"
    assert day.split("}")[0] == month.split("}")[0]
    assert keys.bucket("slack", "U:1") == "p:rate:{slack:U%3A1}"


def test_bad_config_names_the_file_and_the_key(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("context:\n  token_budget: -5\n")
    with pytest.raises(ConfigError, match=r"config.yaml: context.token_budget: .*greater than 0"):
        load_settings(path, environ={})


def test_unknown_key_and_secret_in_file_are_refused(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  modle: x\nopenai_api_key: sk-123\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "llm.modle: unknown setting" in str(info.value)
    assert "openai_api_key: unknown setting; secrets are read only from environment" in str(
        info.value
    )
    assert "sk-123" not in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml: line \d+: not valid YAML"):
        load_settings(path, environ={})


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  model: from-file\ncontext:\n  max_turns: 10\n")
    monkeypatch.setenv("CHATBOT_CONTEXT__MAX_TURNS", "12")
    settings = load_settings(path, environ={"CHATBOT_MODEL": "from-env", "CHATBOT_PORT": "9000"})
    assert settings.llm.model == "from-env"
    assert "from-env" in settings.llm.models
    assert settings.server.port == 9000
    assert settings.context.max_turns == 12


def test_shipped_config_is_valid():
    settings = load_settings(Path(__file__).parents[2] / "config.yaml", environ={})
    assert settings.default_persona in settings.personas


def test_token_estimate_is_documented_rule():
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("é") == 1  # 2 bytes
    counter = TokenCounter("estimate")
    assert not counter.exact
    assert counter.turn(Turn("user", "abcd")) == 5


def test_prompt_keeps_newest_turns_within_budget():
    counter = TokenCounter("estimate")
    history = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " * 10) for i in range(30)]
    prompt = build_prompt(
        system="sys",
        summary="",
        history=history,
        message=Turn("user", "now"),
        budget=200,
        max_turns=40,
        counter=counter,
    )
    assert prompt.tokens <= 200
    assert prompt.messages[0].content == "sys"
    assert prompt.messages[-1].content == "now"
    kept = prompt.messages[1:-1]
    assert kept == history[-len(kept) :]
    assert kept[0].role == "user"


def test_a_web_block_without_a_scope_keeps_each_user_apart():
    from core.config import Settings

    settings = Settings(platforms={"web": {"allowed_origins": ["https://example.com"]}})
    assert settings.platforms.web.scope is Scope.USER_IN_CHANNEL
