"""Authorization: which senders may call which methods, or send which notifications.

A :class:`Policy` is a list of :class:`Allow` rules over *principals*: the
authenticated sender of a message, as the transport (or a signature)
established it, never as the message claims. Roles name groups of
principals by glob pattern (``{"compute": ["compute-*"]}``) and rules name
them as ``role:compute``. What no rule allows is denied, unauthenticated
senders included: a server given a policy serves only the senders it names.

A server checks each request on the driver thread, before anything is
decoded beyond the header: a refused call gets :class:`rpclib.Forbidden`,
a refused cast is dead-lettered with the reason, and the handler never runs.
A notification listener checks the event type the same way.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

ROLE_PREFIX = "role:"
_NAME = re.compile(r"^[A-Za-z0-9_.*?@:\-\[\]!]+$")


def _globs(kind: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{kind} must be a list of names or patterns, not the string {values!r}")
    out = tuple(values)
    for value in out:
        if type(value) is not str or not value or not _NAME.match(value):
            raise ValueError(f"bad {kind} pattern {value!r}")
    return out


@lru_cache(maxsize=4096)
def _matcher(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _matches(patterns: tuple[str, ...], value: str) -> bool:
    return any(p == value or _matcher(p).match(value) for p in patterns)


@dataclass(frozen=True)
class Allow:
    """Allow ``principals`` (names, globs, or ``role:NAME``) some methods or notifications.

    A call rule names a ``namespace`` (``None`` is the default namespace,
    ``"*"`` any) and ``methods`` (globs); a notification rule names
    ``events`` (event-type globs) instead. ``name`` labels the rule in logs.
    """

    principals: tuple[str, ...]
    namespace: str | None = "*"
    methods: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    name: str = ""

    def __init__(
        self,
        *principals: str,
        namespace: str | None = "*",
        methods: Iterable[str] = (),
        events: Iterable[str] = (),
        name: str = "",
    ) -> None:
        if not principals:
            raise ValueError("Allow() needs at least one principal or role:NAME")
        methods_t = _globs("method", methods)
        events_t = _globs("event", events)
        if bool(methods_t) == bool(events_t):
            raise ValueError(
                "an Allow rule names either methods (for calls and casts) or events "
                "(for notifications), and exactly one of them"
            )
        object.__setattr__(self, "principals", _globs("principal", principals))
        object.__setattr__(self, "namespace", namespace)
        object.__setattr__(self, "methods", methods_t)
        object.__setattr__(self, "events", events_t)
        object.__setattr__(self, "name", name or self._describe())

    def _describe(self) -> str:
        who = ",".join(self.principals)
        if self.events:
            return f"allow {who} events {','.join(self.events)}"
        ns = "(default)" if self.namespace is None else self.namespace
        return f"allow {who} {ns}.{{{','.join(self.methods)}}}"


@dataclass(frozen=True)
class Decision:
    """The outcome of a check: ``allowed``, and the rule that decided it (for logs)."""

    allowed: bool
    rule: str


DEFAULT_DENY = "default deny: no rule allows it"


class Policy:
    """Rules and roles; everything they do not allow is denied."""

    def __init__(
        self, rules: Iterable[Allow], roles: Mapping[str, Iterable[str]] | None = None
    ) -> None:
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, Allow):
                raise TypeError(f"Policy rules must be Allow(...), got {rule!r}")
        self.roles = {role: _globs("principal", members) for role, members in (roles or {}).items()}
        for rule in self.rules:
            for p in rule.principals:
                if p.startswith(ROLE_PREFIX) and p[len(ROLE_PREFIX) :] not in self.roles:
                    raise ValueError(f"rule {rule.name!r} names unknown role {p!r}")
        self._cache: dict[tuple[str, str | None, str, bool], Decision] = {}

    def _names(self, rule: Allow, principal: str) -> bool:
        for p in rule.principals:
            if p.startswith(ROLE_PREFIX):
                if _matches(self.roles[p[len(ROLE_PREFIX) :]], principal):
                    return True
            elif p == principal or _matcher(p).match(principal):
                return True
        return False

    def check_call(self, principal: str | None, namespace: str | None, method: str) -> Decision:
        """May ``principal`` call or cast ``method`` of ``namespace``?"""
        return self._check(principal, namespace, method, notification=False)

    def check_notification(self, principal: str | None, event_type: str) -> Decision:
        """May ``principal`` send notifications of ``event_type``?"""
        return self._check(principal, None, event_type, notification=True)

    def _check(
        self, principal: str | None, namespace: str | None, what: str, *, notification: bool
    ) -> Decision:
        if principal is None:
            return Decision(False, "unauthenticated sender: a policy serves named principals only")
        key = (principal, namespace, what, notification)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        decision = Decision(False, DEFAULT_DENY)
        for rule in self.rules:
            if notification:
                if not rule.events or not _matches(rule.events, what):
                    continue
            else:
                if not rule.methods or not _matches(rule.methods, what):
                    continue
                if rule.namespace != "*" and rule.namespace != namespace:
                    continue
            if self._names(rule, principal):
                decision = Decision(True, rule.name)
                break
        if len(self._cache) < 65536:
            self._cache[key] = decision
        return decision

    def __repr__(self) -> str:
        return f"<Policy {len(self.rules)} rules, roles {sorted(self.roles)}>"
