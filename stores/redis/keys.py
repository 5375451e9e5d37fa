"""Every Redis key the bot uses is built here, and only here.

Cluster-safe layout: what one write must change together shares a hash tag (`{...}`), so it
lands on one Redis Cluster slot and one MULTI/EXEC can carry it.
- `{prefix}:conv:{<conversation id>}:*`: a conversation's history, settings, lock, usage,
  pending messages and delivery claims; a turn's whole MULTI (or, on a Cluster, its script).
- `{prefix}:usage:{<platform>:<user>}:<period>` and `{prefix}:rate:{<platform>:<user>}`: one
  user's usage counters and rate-limit bucket (the day's and month's counters change in one
  script).
- everything else is one key per command: channel defaults, cached answers, heartbeats,
  delivery ids seen outside a conversation, the journal's set of owners.
- `{prefix}:journal:{<owner>}`: one process's answer journal (its own slot).
- `{prefix}:stream:{p<n>}` and `...:lease`, `...:seen:*`: partition n of the messages the
  ingress hands to the workers, the lease of the worker reading it, and the ingress's
  delivery dedupe (appended in one script with the entry).

Upgrading from the layout before 0.2 (usage keys without the user's tag): `chatbot migrate`.
"""

from __future__ import annotations

from core.model import ContextKey, id_part


class KeyBuilder:
    """Redis key names under one prefix (one prefix per deployment or per test)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _base(self, key: ContextKey) -> str:
        return self.conversation(key.id)

    def conversation(self, conversation_id: str) -> str:
        """The common start of a conversation's key names, from its id."""
        return f"{self.prefix}:conv:{{{conversation_id}}}"

    def history(self, key: ContextKey) -> str:
        return self._base(key) + ":history"

    def meta(self, key: ContextKey) -> str:
        """A hash: summary, persona, model (and the write tokens of the last append/summary)."""
        return self._base(key) + ":meta"

    def lock(self, key: ContextKey) -> str:
        return self._base(key) + ":lock"

    def usage(self, key: ContextKey) -> str:
        """A hash: the conversation's token usage (prompt, completion, total)."""
        return self._base(key) + ":usage"

    def masks(self, key: ContextKey) -> str:
        """A hash: the conversation's masked values -> their placeholders (`privacy.mask`)."""
        return self._base(key) + ":masks"

    def image(self, key: ContextKey, image_id: str) -> str:
        """An image of a user turn, kept `media.image_ttl_hours` for follow-up questions."""
        return f"{self._base(key)}:image:{image_id}"

    def pending(self, key: ContextKey) -> str:
        """A sorted set: the conversation's messages claimed and not answered yet, by order."""
        return self._base(key) + ":pending"

    def seen_in(self, key: ContextKey, namespace: str, delivery_id: str) -> str:
        """A delivery's seen key in its conversation's slot (claimed with `pending`)."""
        return f"{self._base(key)}:seen:{id_part(namespace)}:{id_part(delivery_id)}"

    def channel(self, key: ContextKey) -> str:
        """A hash: the channel's defaults (persona, model) set by an admin.

        Built from the message's own key, not the scoped one, so every conversation of the
        channel (per user, per thread) shares it.
        """
        parts = (key.platform, key.workspace, key.channel)
        return f"{self.prefix}:chan:" + ":".join(id_part(part) for part in parts)

    def _user(self, platform: str, user: str) -> str:
        return f"{{{id_part(platform)}:{id_part(user)}}}"

    def user_usage(self, platform: str, user: str, period: str) -> str:
        """A hash: one user's token usage in one period (`d2025-01-31`, `m2025-01`)."""
        return f"{self.prefix}:usage:{self._user(platform, user)}:{period}"

    def legacy_user_usage(self, platform: str, user: str, period: str) -> str:
        """The same before 0.2, without the hash tag (what `chatbot migrate` moves)."""
        return f"{self.prefix}:usage:{id_part(platform)}:{id_part(user)}:{period}"

    def person_conversations(self, platform: str, user: str) -> str:
        """A set: the ids of the conversations a person spoke in (export and erasure)."""
        return f"{self.prefix}:person:{self._user(platform, user)}:conversations"

    def person_cache(self, platform: str, user: str) -> str:
        """A set: the cache keys of answers to a person's messages (erasure)."""
        return f"{self.prefix}:person:{self._user(platform, user)}:cache"

    def person_approvals(self, platform: str, user: str) -> str:
        """A set: the ids of a person's pending approvals (export and erasure)."""
        return f"{self.prefix}:person:{self._user(platform, user)}:approvals"

    def approval(self, approval_id: str) -> str:
        """A pending tool approval's record (`tools.approval_ttl`, and a day to say expired)."""
        return f"{self.prefix}:approval:{id_part(approval_id)}"

    def user_usage_pattern(self, platform: str, user: str) -> str:
        """A SCAN pattern matching every period of one user's usage counters."""
        return f"{self.prefix}:usage:{self._user(platform, user)}:*"  # no glob characters:
        # the parts are percent-escaped

    def bucket(self, platform: str, user: str) -> str:
        """A hash: one user's rate-limit token bucket (tokens, ts, taken)."""
        return f"{self.prefix}:rate:{self._user(platform, user)}"

    def cache(self, digest: str) -> str:
        """A string: a cached answer, by the digest of what it answers."""
        return f"{self.prefix}:cache:{digest}"

    def owner(self, owner: str) -> str:
        """A process's heartbeat (the journal keeps it alive): gone when the process died."""
        return f"{self.prefix}:owner:{id_part(owner)}"

    def journal(self, owner: str) -> str:
        """A hash: the messages `owner` is answering, entry id -> owner, since and message."""
        return f"{self.prefix}:journal:{{{id_part(owner)}}}"

    def journal_owners(self) -> str:
        """A set: the owners that ever journaled (recovery looks for the dead ones here)."""
        return f"{self.prefix}:journal:owners"

    def legacy_journal(self) -> str:
        """The one journal hash before 0.2 (recovery still answers what it holds)."""
        return f"{self.prefix}:journal"

    def seen(self, namespace: str, delivery_id: str) -> str:
        return f"{self.prefix}:seen:{id_part(namespace)}:{id_part(delivery_id)}"

    def stream(self, partition: int) -> str:
        """A stream: partition `partition` of the messages waiting for a worker."""
        return f"{self.prefix}:stream:{{p{partition}}}"

    def stream_lease(self, partition: int) -> str:
        """The id of the worker reading the partition, with a TTL it renews."""
        return self.stream(partition) + ":lease"

    def stream_seen(self, partition: int, namespace: str, delivery_id: str) -> str:
        """A delivery the ingress appended (in the partition's slot, set with the entry)."""
        return f"{self.stream(partition)}:seen:{id_part(namespace)}:{id_part(delivery_id)}"

    def workers(self) -> str:
        """A sorted set: live workers by the time (ms) their registration runs out."""
        return f"{self.prefix}:workers"
