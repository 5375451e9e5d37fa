"""Pure pieces: what the summariser folds, how cache keys normalise text, usage periods and
the wording of waits."""

from __future__ import annotations

from datetime import UTC, datetime

from core.conversation.memory import needs_summary, split_for_summary
from core.llm.tokens import TokenCounter
from core.model import Turn
from core.policies.cache import AnswerCache, normalise
from core.policies.usage import UsageBook, describe_wait
from core.sections import CacheSettings


def turns(*roles_and_sizes: tuple[str, int]) -> list[Turn]:
    return [Turn(role, "x" * size) for role, size in roles_and_sizes]  # type: ignore[arg-type]


def test_split_keeps_the_newest_turns_within_the_budget_starting_with_a_question():
    counter = TokenCounter("estimate")
    history = turns(("user", 40), ("assistant", 40), ("user", 40), ("assistant", 40))
    folded, kept = split_for_summary(history, keep_tokens=30, counter=counter)
    assert (len(folded), len(kept)) == (2, 2)  # each turn costs 14: two fit in 30
    assert kept[0].role == "user"

    # an answer that would be kept alone goes with its question into the summary
    folded, kept = split_for_summary(history, keep_tokens=45, counter=counter)
    assert (len(folded), len(kept)) == (2, 2)

    # at least the last exchange is kept, however big
    folded, kept = split_for_summary(turns(("user", 4000), ("assistant", 4000)), 10, counter)
    assert folded == [] and len(kept) == 2


def test_needs_summary():
    assert needs_summary(dropped=1, stored=4, max_turns=40)
    assert needs_summary(dropped=0, stored=39, max_turns=40)
    assert not needs_summary(dropped=0, stored=10, max_turns=40)


def test_normalised_texts_share_a_cache_key():
    assert normalise("  What IS   Redis?! ") == "what is redis"
    assert normalise("Ｗｈａｔ’s up") == "what's up"
    cache = AnswerCache(CacheSettings(enabled=True))
    assert cache.chat_key("default", "m", "What is Redis?") == cache.chat_key(
        "default", "m", "what is redis"
    )
    assert cache.chat_key("default", "m", "x") != cache.chat_key("pirate", "m", "x")
    assert cache.chat_key("default", "m", "x") != cache.chat_key("default", "n", "x")
    assert cache.chat_key("d", "m", "x") != cache.intent_key("d", "x")


def test_usage_periods_and_reset_follow_the_configured_zone():
    book = UsageBook("Asia/Tokyo")
    late_utc = datetime(2025, 1, 31, 20, 0, tzinfo=UTC)  # already 1 February in Tokyo
    assert book.periods(late_utc) == ("d2025-02-01", "m2025-02")
    reset = book.next_day(late_utc)
    assert reset.isoformat() == "2025-02-02T00:00:00+09:00"


def test_describe_wait():
    assert describe_wait(0.2) == "1 s"
    assert describe_wait(45) == "45 s"
    assert describe_wait(61) == "2 min"
    assert describe_wait(3 * 3600 + 5 * 60) == "3 h 5 min"
    assert describe_wait(7200) == "2 h"
