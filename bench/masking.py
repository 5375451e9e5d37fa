"""`python -m bench.masking`: the CPU one `Masker.mask()` call costs per message.

A few thousand typical chat messages (seeded, so every run sees the same ones): most hold no
sensitive data (questions, small talk, dates, times, prices, versions, order numbers, pasted
code and logs), about one in ten holds an address, a phone number, a card, an IBAN or an API key.
Each message is masked with masking off, with every kind on (international phone numbers
only) and with every kind on plus `phone_region: DE` (national numbers too, so the phone
matcher runs on more messages), side by side in one run. Messages are grouped in conversations
of 20 whose placeholders carry over (`known`), as a turn would pass them. The figure is the
fastest of `--repeat` passes over all messages, in µs of process CPU per message.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from core.policies.masking import Masker
from core.sections import MASK_KINDS, PrivacySettings

CONVERSATION = 20  # messages whose placeholders carry over

PLAIN = [
    "thanks!",
    "ok",
    "can you explain how Redis streams differ from pub/sub?",
    "what's the difference between a list and a tuple in Python?",
    "Summarise this for me: the meeting moved to Thursday 14:30, room 4.12, bring the Q3 "
    "numbers (revenue up 12.5% to 1,234,567 EUR).",
    "my order 123456789 from 2024-01-15 still hasn't arrived, what should I write to support?",
    "Translate to German: I'll be there at 10:30 on 12.05.2024.",
    "why does `pip install numpy==1.26.4` fail on Python 3.13?",
    "rewrite this email so it sounds friendlier: Hi team, the release 2.14.0 slips to next "
    "week because build #4521 failed twice. Please check ticket JIRA-9876 before Friday.",
    "give me 5 ideas for a birthday party for a 7 year old",
    "how many calories are in 250 g of rice?",
    "is 1 2 3 4 5 6 7 8 a valid sequence for this puzzle?",
    "Explain simply: what does HTTP 429 mean and how long should a client wait?",
]
CODE = """Traceback (most recent call last):
  File "/srv/app/worker.py", line 212, in handle
    result = await client.get(f"/v2/orders/{order_id}", timeout=30)
  File "/usr/lib/python3.11/site-packages/httpx/_client.py", line 1757, in get
httpx.ReadTimeout: timed out after 30.0 s (request 7f3c9a2e-41b8-4c1d-9e0f-2a6b8d4c1e77)
2024-06-01T12:34:56.789Z WARN pool=12 waiting=48 p99=2345ms
why does this happen and how do I fix it?"""
SENSITIVE = [
    "please send the invoice to ann.lee@example.com, thanks",
    "you can reach me on +49 171 2345678 or 030 1234567 after 6",
    "my card 4111 1111 1111 1111 (exp 12/27) was charged twice, what do I tell the bank?",
    "refund to DE89 3704 0044 0532 0130 00 please, reference ORD-2024-0042",
    "is this key still valid? sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12",
    "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U' https://api.example.com/me returns 401",
    "write a polite reply to bob@example.org and cc carol@example.net about the +1 650 253 "
    "0000 call",
    "AWS says AKIAIOSFODNN7EXAMPLE has no access to the bucket, why?",
]


def messages(count: int, seed: int) -> list[str]:
    """`count` messages: about 1 in 10 sensitive, 1 in 20 a pasted traceback, the rest plain."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.10:
            out.append(rng.choice(SENSITIVE))
        elif roll < 0.15:
            out.append(CODE)
        else:
            out.append(rng.choice(PLAIN))
    return out


def cpu_per_message(masker: Masker, texts: list[str], repeat: int) -> float:
    """µs of process CPU per `mask()` call, the fastest of `repeat` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time_ns()
        known: dict[str, str] = {}
        for index, text in enumerate(texts):
            if index % CONVERSATION == 0:
                known = {}
            known |= masker.mask(text, known).added
        best = min(best, time.process_time_ns() - started)
    return best / len(texts) / 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.masking", description=__doc__)
    parser.add_argument("--messages", type=int, default=4000, help="messages per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the fastest counts")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)

    texts = messages(args.messages, args.seed)
    plain = [t for t in texts if t not in SENSITIVE]
    sensitive = [t for t in texts if t in SENSITIVE]
    configs = {
        "off": PrivacySettings(),
        "all kinds": PrivacySettings(mask=list(MASK_KINDS)),
        "all kinds, phone_region DE": PrivacySettings(mask=list(MASK_KINDS), phone_region="DE"),
    }
    chars = statistics.mean(len(t) for t in texts)
    print(
        f"{len(texts)} messages ({len(sensitive)} with sensitive data, "
        f"{chars:.0f} characters on average); µs of CPU per mask() call, best of {args.repeat}"
    )
    print(f"{'masking':<28} {'all':>9} {'plain':>9} {'sensitive':>10}")
    for label, settings in configs.items():
        masker = Masker(settings)
        masker.mask(" ".join(SENSITIVE), {})  # warm: the phone metadata loads on first use
        figures = [cpu_per_message(masker, group, args.repeat) for group in (texts, plain)]
        figures.append(cpu_per_message(masker, sensitive, args.repeat))
        print(f"{label:<28} {figures[0]:>9.1f} {figures[1]:>9.1f} {figures[2]:>10.1f}")


if __name__ == "__main__":
    main()
