"""Masking: sensitive data in a user's message becomes a stable placeholder (`<EMAIL_1>`)
before the text reaches the model, the history, the cache and the logs.

Pure: no I/O, no clock, no state between calls. What a conversation has already masked comes in
as `known` (original value -> placeholder) and what this text adds goes out in `Masked.added`,
so the caller keeps the mapping wherever it keeps the conversation.

Kinds (`privacy.mask`): email (a regex), phone (the `phonenumbers` library, VALID leniency),
card (13-19 digits passing Luhn), iban (`stdnum.iban`: checksum, country length and format),
secret (API keys and tokens with well-known prefixes), and the operator's `privacy.patterns`.

Overlaps: the longest match wins, then the earliest, then secret, iban, card, email, phone
and the operator's kinds in this order.
Placeholders already in the text are never masked again, and numbers continue after the
highest one of the kind in `known` or in the text, so `<EMAIL_1>` keeps meaning one address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import phonenumbers
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher
from stdnum import iban as stdnum_iban

from core.sections import PrivacySettings

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_([1-9][0-9]{0,8})>")

_DIGIT = re.compile(r"\d")
# Seven digits with at most 4 of the matcher's separators between two (spaces, dashes, dots,
# slashes, brackets ...): without such a run the (slow) phone matcher is not run at all.
_PHONE_MIN_DIGITS = 7
_PHONE_SEPARATOR = (
    r"[\s\-x\u2010-\u2015\u2212\u30fc\uff0d-\uff0f\xad\u200b\u2060"
    r"()\uff08\uff09\uff3b\uff3d.\[\]/~\u2053\u223c\uff5e]"
)
_PHONE_CANDIDATE = re.compile(rf"\d(?:{_PHONE_SEPARATOR}{{0,4}}\d){{{_PHONE_MIN_DIGITS - 1}}}")
_CARD_MIN_DIGITS = 13
_CARD_MAX_DIGITS = 19
_IBAN_MIN_CHARS = 15  # Norway's; the longest is 34

# A pragmatic address, not RFC 5322: a dotted domain whose last label is 2+ letters (or
# punycode), so `a@b`, `user@localhost` and `@mentions` stay as they are.
_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"[\w%+-]+(?:\.[\w%+-]+)*"
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+"
    r"(?:[^\W\d_]{2,63}|xn--[a-z0-9-]{1,59})"
    r"(?![\w-])",
    re.IGNORECASE,
)

# Digits with single spaces or dashes between groups; card numbers are group-aligned spans.
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")  # maximal: finditer never starts mid-run
_GROUP = re.compile(r"[0-9]+")

# Two letters, two check digits, then the BBAN: in one piece, or in groups of 4 (the last
# group shorter) split by single spaces. Group-aligned prefixes are tried, longest first,
# so a short word after the number ("... 0130 00 and") does not spoil it.
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)"
    r"(?![A-Za-z0-9])"
)

# Prefixes issued by the services themselves, with a minimum length so words never match.
_SECRET_PATTERNS = (
    r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}",  # OpenAI (a digit is checked below)
    r"xox[bp]-[0-9A-Za-z-]{20,}",  # Slack bot and user tokens
    r"xapp-[0-9A-Za-z-]{20,}",  # Slack app-level tokens
    r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens (36 characters after the prefix)
    r"github_pat_[A-Za-z0-9_]{40,}",  # GitHub fine-grained tokens
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key ids (20 characters)
    r"AIza[0-9A-Za-z_-]{35}",  # Google API keys (39 characters)
    r"glpat-[0-9A-Za-z_-]{20,}",  # GitLab personal access tokens
    r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}",  # Stripe secret and restricted keys
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}",  # a JWT
)
_SECRET = re.compile(r"(?<![A-Za-z0-9_-])(?:" + "|".join(_SECRET_PATTERNS) + r")(?![A-Za-z0-9_-])")

# Ties between spans of one length and start go to the kind listed first.
_PRIORITY = {kind: rank for rank, kind in enumerate(("SECRET", "IBAN", "CARD", "EMAIL", "PHONE"))}
_OPERATOR_RANK = len(_PRIORITY)


@dataclass(frozen=True)
class Masked:
    """A masked text and the value -> placeholder pairs it added to the conversation's."""

    text: str
    added: dict[str, str]


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: str  # upper case, as in the placeholder
    value: str
    canonical: str  # the same value however it was written: digits only, E.164, case folded


class Masker:
    """Built once from `PrivacySettings`; `mask()` is pure and safe to share."""

    def __init__(self, settings: PrivacySettings) -> None:
        kinds = set(settings.mask)
        self._region = settings.phone_region
        self._patterns = [
            (name.upper(), re.compile(pattern)) for name, pattern in settings.patterns.items()
        ]
        self._finders: list[Callable[[str], Iterator[_Span]]] = [
            finder
            for kind, finder in (
                ("secret", self._secrets),
                ("iban", self._ibans),
                ("card", self._cards),
                ("email", self._emails),
                ("phone", self._phones),
            )
            if kind in kinds
        ]
        if self._patterns:
            self._finders.append(self._operator)

    @property
    def enabled(self) -> bool:
        return bool(self._finders)

    def mask(self, text: str, known: Mapping[str, str]) -> Masked:
        """`text` with each sensitive value replaced by its placeholder: the one in `known`
        (value -> placeholder, this conversation's so far) or a new one, listed in `added`."""
        if not self._finders or not text:
            return Masked(text, {})
        spans = [span for finder in self._finders for span in finder(text)]
        if not spans:
            return Masked(text, {})
        reserved = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)] if "<" in text else []
        chosen = _choose(spans, reserved)
        if not chosen:
            return Masked(text, {})
        return self._replace(text, chosen, known)

    # --- finders: each one pass over the text at most -------------------------------------

    def _emails(self, text: str) -> Iterator[_Span]:
        if "@" not in text:
            return
        for match in _EMAIL.finditer(text):
            value = match.group()
            yield _Span(match.start(), match.end(), "EMAIL", value, value.casefold())

    def _phones(self, text: str) -> Iterator[_Span]:
        if self._region is None and "+" not in text and "\uff0b" not in text:
            return  # without a region only +numbers are found
        if not _PHONE_CANDIDATE.search(text):
            return
        for match in PhoneNumberMatcher(text, self._region, leniency=Leniency.VALID):
            canonical = phonenumbers.format_number(match.number, PhoneNumberFormat.E164)
            yield _Span(match.start, match.end, "PHONE", match.raw_string, canonical)

    def _cards(self, text: str) -> Iterator[_Span]:
        for run in _DIGIT_RUN.finditer(text):
            groups = [
                (g.start() + run.start(), g.end() + run.start())
                for g in _GROUP.finditer(run.group())
            ]
            # a number glued to a word (a hash, a product code) is not a card
            glued_before = run.start() > 0 and _is_word(text[run.start() - 1])
            if run.end() < len(text) and _is_word(text[run.end()]):
                groups.pop()
            i = 1 if glued_before else 0
            while i < len(groups):
                found = _card_from(text, groups, i)
                if found is None:
                    i += 1
                    continue
                yield found[0]
                i = found[1]

    def _ibans(self, text: str) -> Iterator[_Span]:
        for match in _IBAN.finditer(text):
            value = match.group()
            while len(value.replace(" ", "")) >= _IBAN_MIN_CHARS:
                if stdnum_iban.is_valid(value):
                    canonical = stdnum_iban.compact(value)
                    yield _Span(match.start(), match.start() + len(value), "IBAN", value, canonical)
                    break
                cut = value.rfind(" ")
                if cut < 0:
                    break
                value = value[:cut]

    def _secrets(self, text: str) -> Iterator[_Span]:
        for match in _SECRET.finditer(text):
            value = match.group()
            if value.startswith("sk-") and not _DIGIT.search(value):
                continue  # sk-learn-and-friends-in-a-long-hyphenated-phrase
            yield _Span(match.start(), match.end(), "SECRET", value, value)

    def _operator(self, text: str) -> Iterator[_Span]:
        for kind, pattern in self._patterns:
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    value = match.group()
                    yield _Span(match.start(), match.end(), kind, value, value)

    # --- placeholders -----------------------------------------------------------------------

    def _replace(self, text: str, chosen: list[_Span], known: Mapping[str, str]) -> Masked:
        added: dict[str, str] = {}
        by_canonical: dict[tuple[str, str], str] | None = None
        highest: dict[str, int] | None = None
        pieces: list[str] = []
        at = 0
        for span in chosen:
            placeholder = known.get(span.value) or added.get(span.value)
            if placeholder is None:
                if by_canonical is None:
                    by_canonical = self._canonical_index(known)
                placeholder = by_canonical.get((span.kind, span.canonical))
                if placeholder is None:
                    if highest is None:
                        highest = _highest(known.values(), text)
                    number = highest.get(span.kind, 0) + 1
                    highest[span.kind] = number
                    placeholder = f"<{span.kind}_{number}>"
                    by_canonical[(span.kind, span.canonical)] = placeholder
                added[span.value] = placeholder
            pieces += (text[at : span.start], placeholder)
            at = span.end
        pieces.append(text[at:])
        return Masked("".join(pieces), added)

    def _canonical_index(self, known: Mapping[str, str]) -> dict[tuple[str, str], str]:
        """(kind, canonical value) -> placeholder for what the conversation already masked, so
        `Ann@Example.com` and `4111-1111-1111-1111` find the placeholder of their other
        spelling."""
        index: dict[tuple[str, str], str] = {}
        for value, placeholder in known.items():
            parsed = PLACEHOLDER.fullmatch(placeholder)
            if parsed is None:
                continue
            kind = parsed.group(1)
            index.setdefault((kind, self._canonical(kind, value)), placeholder)
        return index

    def _canonical(self, kind: str, value: str) -> str:
        if kind == "EMAIL":
            return value.casefold()
        if kind == "CARD":
            return re.sub(r"[^0-9]", "", value)
        if kind == "IBAN":
            return stdnum_iban.compact(value)
        if kind == "PHONE":
            try:
                number = phonenumbers.parse(value, self._region)
            except phonenumbers.NumberParseException:
                return value
            return phonenumbers.format_number(number, PhoneNumberFormat.E164)
        return value


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _card_from(text: str, groups: list[tuple[int, int]], first: int) -> tuple[_Span, int] | None:
    """The longest card number made of whole groups from `groups[first]` on, and the index of
    the group after it; None if none passes the Luhn check."""
    best: tuple[_Span, int] | None = None
    count = 0
    for last in range(first, len(groups)):
        size = groups[last][1] - groups[last][0]
        if last > first and min(size, groups[first][1] - groups[first][0]) < 3:
            break  # printed cards group 3 to 6 digits: "12" after one is an expiry, not it
        count += size
        if count > _CARD_MAX_DIGITS:
            break
        if count >= _CARD_MIN_DIGITS:
            value = text[groups[first][0] : groups[last][1]]
            number = re.sub(r"[^0-9]", "", value)
            if luhn_valid(number):
                best = (_Span(groups[first][0], groups[last][1], "CARD", value, number), last + 1)
    return best


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of a string of ASCII digits."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _choose(spans: list[_Span], reserved: list[tuple[int, int]]) -> list[_Span]:
    """The spans to replace, in text order: longest first, then earliest, then by kind; none
    that overlaps one already taken or a placeholder already in the text."""
    taken = list(reserved)
    chosen = []
    for span in sorted(
        spans,
        key=lambda s: (s.start - s.end, s.start, _PRIORITY.get(s.kind, _OPERATOR_RANK)),
    ):
        if all(span.end <= start or end <= span.start for start, end in taken):
            taken.append((span.start, span.end))
            chosen.append(span)
    chosen.sort(key=lambda s: s.start)
    return chosen


def _highest(placeholders: Iterable[str], text: str) -> dict[str, int]:
    """The highest number of each kind among the conversation's placeholders and those
    already in the text."""
    highest: dict[str, int] = {}
    found = [PLACEHOLDER.fullmatch(p) for p in placeholders]
    found += PLACEHOLDER.finditer(text) if "<" in text else []
    for match in found:
        if match is not None:
            kind, number = match.group(1), int(match.group(2))
            if number > highest.get(kind, 0):
                highest[kind] = number
    return highest
