"""The masking policy: each kind's hits and near misses, placeholders that stay stable across
turns, the operator's own patterns, and the config checks of `privacy`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from core.policies.masking import Masked, Masker, luhn_valid
from core.sections import MASK_KINDS, PrivacySettings


def masker(*kinds: str, region: str | None = None, **patterns: str) -> Masker:
    return Masker(
        PrivacySettings.model_validate(
            {"mask": list(kinds), "phone_region": region, "patterns": patterns}
        )
    )


def masked(text: str, *kinds: str, region: str | None = None, **patterns: str) -> str:
    return masker(*kinds, region=region, **patterns).mask(text, {}).text


# --- off -----------------------------------------------------------------------------------


def test_masking_off_changes_nothing():
    off = Masker(PrivacySettings())
    text = "ann@example.com +49 30 12345678 4111 1111 1111 1111 DE89370400440532013000"
    assert not off.enabled
    assert off.mask(text, {}) == Masked(text, {})
    assert off.mask(text, {"ann@example.com": "<EMAIL_1>"}).text == text


def test_enabled_by_a_kind_or_a_pattern():
    assert masker("email").enabled
    assert masker(order=r"ORD-\d+").enabled


def test_text_without_sensitive_data_is_returned_as_is():
    every = masker(*MASK_KINDS, region="DE")
    for text in ["", "hello there, how are you?", "meet at 10:30 on 2024-01-15, room 4"]:
        assert every.mask(text, {}) == Masked(text, {})


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ann@example.com.", "write to <EMAIL_1>."),
        ("<ann.lee+news@mail.example.co.uk>", "<<EMAIL_1>>"),
        ("jörg@münchen.de, bob_2@EXAMPLE.ORG", "<EMAIL_1>, <EMAIL_2>"),
        ("x@xn--p1ai.xn--p1ai", "<EMAIL_1>"),
    ],
)
def test_emails_are_masked(text: str, expected: str):
    assert masked(text, "email") == expected


@pytest.mark.parametrize(
    "text",
    ["a@b", "user@localhost", "ping @channel", "foo@bar.c", "x@1.2", "me@-bad-.com", "a@b."],
)
def test_not_emails_are_left_alone(text: str):
    assert masked(text, "email") == text


# --- phone ---------------------------------------------------------------------------------


def test_international_numbers_are_masked_without_a_region():
    text = "call +49 30 12345678 or +1 650 253 0000, not 030 1234567"
    assert masked(text, "phone") == "call <PHONE_1> or <PHONE_2>, not 030 1234567"


def test_national_numbers_need_the_region():
    assert masked("mobile 0171 2345678", "phone", region="DE") == "mobile <PHONE_1>"
    assert masked("(415) 555-2671", "phone", region="US") == "<PHONE_1>"
    assert masked("mobile 0171 2345678", "phone", region="US") == "mobile 0171 2345678"


@pytest.mark.parametrize(
    "text",
    [
        "on 2024-01-15 at 10:30",
        "12.05.2024 18:00",
        "order 123456789 shipped",
        "ticket #1234567",
        "invoice 20240115-0042",
        "IP 192.168.100.200",
        "version 1.2.3.4567",
        "total 1234567 EUR",
        "+1 23",  # too few digits: the matcher is not even run
    ],
)
def test_dates_and_order_numbers_are_not_phones(text: str):
    assert masked(text, "phone", region="DE") == text


def test_one_number_written_two_ways_is_one_placeholder():
    result = masker("phone", region="DE").mask("+49 171 2345678 or 0171 2345678", {})
    assert result.text == "<PHONE_1> or <PHONE_1>"
    assert result.added == {"+49 171 2345678": "<PHONE_1>", "0171 2345678": "<PHONE_1>"}


# --- card ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111111111111111", "<CARD_1>"),
        ("card 4111 1111 1111 1111 exp 12/27", "card <CARD_1> exp 12/27"),
        ("5555-5555-5555-4444.", "<CARD_1>."),
        ("amex 3782 822463 10005", "amex <CARD_1>"),
        ("4111111111111111 12 27", "<CARD_1> 12 27"),  # the expiry is not part of it
        ("4111 1111 1111 1111 5555 5555 5555 4444", "<CARD_1> <CARD_2>"),
    ],
)
def test_card_numbers_are_masked(text: str, expected: str):
    assert masked(text, "card") == expected


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails the Luhn check
        "4111111111111112",
        "411111111111",  # 12 digits: too short
        "41111111111111111111111",  # 23 digits: too long, and no card inside a longer number
        "4111  1111  1111  1111",  # double spaces: not one number
        "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6",
        "commit a3f4111111111111111b2",  # inside a hash
        "SKU4111111111111111 and 4111 1111 1111 1111x",  # glued to a word
    ],
)
def test_not_card_numbers_are_left_alone(text: str):
    assert masked(text, "card") == text


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("378282246310006")


# --- iban ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DE89370400440532013000", "<IBAN_1>"),
        ("to DE89 3704 0044 0532 0130 00 please", "to <IBAN_1> please"),
        ("GB82 WEST 1234 5698 7654 32.", "<IBAN_1>."),
        ("ES91 2100 0418 4502 0005 1332 from Ann", "<IBAN_1> from Ann"),
        ("no9386011117947", "<IBAN_1>"),
        ("FR1420041010050500013M02606", "<IBAN_1>"),
    ],
)
def test_ibans_are_masked(text: str, expected: str):
    assert masked(text, "iban") == expected


@pytest.mark.parametrize(
    "text",
    [
        "DE89370400440532013001",  # wrong check digits
        "DE89 3704 0044 0532 0130 01",
        "DE8937040044053201300",  # one digit short for Germany
        "XX89370400440532013000",  # no such country
        "ab12cdefghijklmnopq",
    ],
)
def test_invalid_ibans_are_left_alone(text: str):
    assert masked(text, "iban") == text


# --- secret --------------------------------------------------------------------------------

SECRETS = [
    "sk-" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kL9nP2rS5uX8",
    "sk-proj-" + "Ab12_Cd34-Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "xoxp-123456789012-123456789012-1234567890123-abcdef0123456789abcdef0123456789",
    "xapp-1-A0123456789-1234567890123-abcdef0123456789abcdef",
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "gho_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "ghs_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github_pat_11ABCDEFG0123456789abc_" + "x" * 59,
    "AKIAIOSFODNN7EXAMPLE",
    "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "glpat-" + "xXyYzZ0123456789abcd",
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "rk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
]


@pytest.mark.parametrize("secret", SECRETS, ids=lambda s: s[:8])
def test_secrets_are_masked(secret: str):
    assert masked(f"my key: {secret}, thanks", "secret") == "my key: <SECRET_1>, thanks"


@pytest.mark.parametrize(
    "text",
    [
        "sk-learn-is-a-great-library-for-machine-learning-folks",  # no digit: words
        "a risk-assessment-of-the-2024-budget-and-the-whole-plan",  # sk- inside a word
        "sk-short1",
        "ghp_tooShort123",
        "AKIA and AKIAIOSFODNN7EXAMPLE2",  # 21 characters: not an access key id
        "AIzaShort",
        "eyJ alone, eyJhbGciOiJIUzI1NiJ9 too",
        "xoxo, glpat- and sk_live_ in a sentence",
        "desk_live_reporting and task-force",
    ],
)
def test_words_are_not_secrets(text: str):
    assert masked(text, "secret") == text


# --- operator patterns ---------------------------------------------------------------------


def test_operator_patterns_become_their_own_kind():
    patterns = {"order": r"\bORD-\d{6}\b", "employee_id": r"\bE\d{5}\b"}
    text = "ORD-123456 for E12345 and ORD-654321, not ORD-12"
    assert masked(text, **patterns) == "<ORDER_1> for <EMPLOYEE_ID_1> and <ORDER_2>, not ORD-12"


def test_operator_patterns_and_kinds_together():
    text = "ann@example.com ordered ORD-123456"
    assert masked(text, "email", order=r"ORD-\d+") == "<EMAIL_1> ordered <ORDER_1>"


# --- placeholders --------------------------------------------------------------------------


def test_numbering_is_stable_across_turns():
    every = masker(*MASK_KINDS)
    first = every.mask("I am ann@example.com, card 4111 1111 1111 1111", {})
    assert first.text == "I am <EMAIL_1>, card <CARD_1>"
    known = dict(first.added)
    second = every.mask("bob@example.org is my colleague; ann@example.com is me", known)
    assert second.text == "<EMAIL_2> is my colleague; <EMAIL_1> is me"
    assert second.added == {"bob@example.org": "<EMAIL_2>"}
    known |= second.added
    third = every.mask("new card 5555 5555 5555 4444, old 4111 1111 1111 1111", known)
    assert third.text == "new card <CARD_2>, old <CARD_1>"
    assert third.added == {"5555 5555 5555 4444": "<CARD_2>"}


def test_numbering_continues_after_the_highest_known():
    known = {"a@example.com": "<EMAIL_1>", "c@example.com": "<EMAIL_7>", "x": "<ORDER_3>"}
    assert masker("email").mask("d@example.com", known).text == "<EMAIL_8>"


def test_the_same_value_twice_gets_one_placeholder():
    result = masker("email").mask("ann@example.com, ann@example.com, Ann@Example.COM", {})
    assert result.text == "<EMAIL_1>, <EMAIL_1>, <EMAIL_1>"
    assert result.added == {"ann@example.com": "<EMAIL_1>", "Ann@Example.COM": "<EMAIL_1>"}


def test_another_spelling_of_a_known_value_keeps_its_placeholder():
    known = {"4111 1111 1111 1111": "<CARD_1>", "ann@example.com": "<EMAIL_1>"}
    result = masker("card", "email").mask("4111-1111-1111-1111 ANN@example.com", known)
    assert result.text == "<CARD_1> <EMAIL_1>"


def test_placeholders_in_the_text_are_never_masked_again():
    every = masker(*MASK_KINDS, region="DE", tag=r"[A-Z]+_\d+", digits=r"\d+")
    text = "<EMAIL_1> wrote to <PHONE_12>"
    assert every.mask(text, {}) == Masked(text, {})
    # a new value does not take a number already used in the text
    assert masker("email").mask("<EMAIL_1> and bob@example.org", {}).text == (
        "<EMAIL_1> and <EMAIL_2>"
    )


def test_the_longest_match_wins_an_overlap():
    every = masker(*MASK_KINDS, region="DE")
    # an email whose local part is a phone number; an IBAN whose digits pass Luhn
    assert every.mask("+491711234567@example.com", {}).text == "<EMAIL_1>"
    assert every.mask("DE89 3704 0044 0532 0130 00", {}).text == "<IBAN_1>"
    assert every.mask("x 4111 1111 1111 1111 y", {}).text == "x <CARD_1> y"


def test_masked_is_frozen():
    result = masker("email").mask("ann@example.com", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "x"  # type: ignore[misc]


# --- config --------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("privacy: {patterns: {ssn: '(\\d{3}'}}", "privacy.patterns: Value error, ssn:"),
        ("privacy: {patterns: {ssn: '(\\d{3}'}}", "is not a valid regex"),
        ("privacy: {patterns: {'2fa': 'x'}}", "'2fa': a name is a letter"),
        ("privacy: {patterns: {my-id: 'x'}}", "'my-id'"),
        ("privacy: {patterns: {maybe: 'x?'}}", "maybe: 'x?' matches the empty text"),
        ("privacy: {mask: [email, ssn]}", "privacy.mask.1"),
        ("privacy: {phone_region: XX}", "privacy.phone_region"),
        ("privacy: {masks: [email]}", "privacy.masks: unknown setting"),
    ],
)
def test_privacy_config_errors_name_the_key(tmp_path: Path, yaml: str, message: str):
    with pytest.raises(ConfigError) as failed:
        load_settings(write(tmp_path, yaml), environ={})
    assert message in str(failed.value)


def test_privacy_config_loads(tmp_path: Path):
    yaml = "privacy: {mask: [email, card], patterns: {order: 'ORD-\\d+'}, phone_region: de}"
    settings = load_settings(write(tmp_path, yaml), environ={})
    assert settings.privacy.mask == ["email", "card"]
    assert settings.privacy.phone_region == "DE"
    assert settings.privacy.profile_ttl_days == 70
    assert load_settings(None, environ={}).privacy == PrivacySettings()
    assert not Masker(load_settings(None, environ={}).privacy).enabled
