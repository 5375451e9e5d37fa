"""Intent matching (entities from named groups, keywords as whole words) and the config
checks that catch a broken intent, action or tool list at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from core.plugins import PluginError, Plugins, load_plugins
from core.routing.intents import IntentMatcher, fill
from core.sections import IntentSettings


def matcher() -> IntentMatcher:
    return IntentMatcher(
        [
            IntentSettings(
                name="weather",
                patterns=[r"weather in (?P<city>[^?]+?)(?: (?P<when>today|tomorrow))?\??$"],
                action="weather",
            ),
            IntentSettings(name="hours", keywords=["opening hours", "open"], template="9-5"),
        ]
    )


@pytest.mark.parametrize(
    ("text", "intent", "entities"),
    [
        ("Weather in Paris?", "weather", {"city": "Paris"}),
        (
            "what’s the weather in New York tomorrow",
            "weather",
            {"city": "New York", "when": "tomorrow"},
        ),
        ("What are your OPENING HOURS", "hours", {}),
        ("are you open?", "hours", {}),
        ("I opened the door", None, None),  # whole words only
        ("tell me a joke", None, None),
    ],
)
def test_matching(text: str, intent: str | None, entities: dict | None):
    found = matcher().match(text)
    assert (found.intent if found else None) == intent
    assert (found.entities if found else None) == entities


def test_template_fill_never_reads_user_text_as_a_template():
    assert fill("Hi {user}, {city} is {missing}fine", {"user": "{city}", "city": "Rome"}) == (
        "Hi {city}, Rome is fine"
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("intents: [{name: a, keywords: [x]}]", "give exactly one of template, action or handler"),
        ("intents: [{name: a, template: t}]", "give patterns or keywords"),
        ("intents: [{name: a, patterns: ['(?P<x'], template: t}]", "is not a valid regex"),
        ("intents: [{name: a, keywords: [x], action: nope}]", "names the action 'nope'"),
        (
            "intents: [{name: a, keywords: [x], template: t},"
            " {name: a, keywords: [y], template: u}]",
            "the name 'a' is used twice",
        ),
        ("actions: {w: {url: 'ftp://x'}}", "must be an http:// or https:// URL"),
        ("actions: {w: {url: 'http://x'}}\ntools: {enabled: [w]}", "needs `parameters`"),
        ("limits: {timezone: Mars/Base}", "unknown time zone 'Mars/Base'"),
        ("moderation: {on_error: maybe}", "moderation.on_error"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, yaml: str, message: str):
    with pytest.raises(ConfigError) as failed:
        load_settings(write(tmp_path, yaml), environ={})
    assert message in str(failed.value)


def test_the_shipped_config_loads_with_the_weather_intent():
    settings = load_settings(Path(__file__).parents[2] / "config.yaml", environ={})
    [weather] = [i for i in settings.intents if i.name == "weather"]
    assert weather.action == "weather" and settings.actions["weather"].url.startswith("http")
    found = IntentMatcher(settings.intents).match("what is the weather in Kyiv?")
    assert found is not None and found.entities == {"city": "Kyiv"}
    assert settings.tools.enabled == [] and not settings.moderation.enabled


def test_plugin_registration_errors_are_clear():
    bot = Plugins()
    with pytest.raises(PluginError, match="the command /help is already taken"):
        bot.command("help")
    with pytest.raises(PluginError, match=r"intent 'x': .*is not a valid regex"):
        bot.intent("x", patterns=["(?P<bad"])
    with pytest.raises(PluginError, match="no setup"):
        load_plugins(["core.tools.calculator"])
    with pytest.raises(PluginError, match="failed to import: ModuleNotFoundError"):
        load_plugins(["no.such.plugin"])
