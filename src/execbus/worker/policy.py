"""Who may do what: the worker's authorization policy and its limits on requests.

**Identity.** A caller is the AMQP ``user_id`` message property. RabbitMQ
itself checks that it equals the user name of the connection that publishes
(a mismatch closes the channel with ``PRECONDITION_FAILED``), so a caller
cannot claim to be someone else, unless the broker gives it the
``impersonator`` tag. With a policy, a request without ``user_id`` is denied.

**Policy file** (TOML, or YAML with the same shape)::

    [[rule]]
    name = "ci"                      # optional, named in denials
    callers = ["ci-*"]               # AMQP user names (globs)
    agents = ["vm-*"]                # agent names (globs)
    containers = ["*"]               # container ids (globs); "" is the agent's host
    users = ["nobody", "1000"]       # exec users as written (globs); "" is the default user
    privileged = false               # may the exec be privileged
    max_timeout = 3600               # execs must set a timeout of at most this (seconds)
    all_execs = false                # may act on (and list) other callers' execs

Rules:

* A request is allowed when **at least one rule allows all of it**; rules
  never combine (the container of one rule and the user of another do not
  add up), so their order does not matter. A caller no rule names may do
  nothing.
* ``exec.run`` / ``exec.create``: the rule must name the caller and the
  agent, and allow the container, the user, ``privileged`` and the timeout.
* ``exec.start``: the same check, of the stored exec's configuration against
  the caller that starts it (a start of an unknown exec only needs the agent).
* Everything else (inspect, wait, list, signal, stdin, resize, remove): a
  rule must name the caller and the agent.
* **Execs belong to their caller.** Any request that names an existing exec
  (a repeated run or create, start, inspect, wait, signal, stdin, resize,
  remove) of another caller is denied, and ``exec.list`` shows the caller's
  own execs only, unless a rule naming the caller and the agent says
  ``all_execs = true`` (an operator).
* Pool requests are authorized after placement, against the agent chosen
  (the one that would run the command).
* Patterns are shell globs (``*``, ``?``, ``[...]``), case-sensitive, against
  the whole value. The **empty value** (container ``""``: the agent's own
  host; user unset: the agent's default user, root for a root agent, or the
  container's own user) is matched only by the pattern ``""``; ``*`` never
  matches it. Users are compared as written: ``nobody`` allows neither
  ``nobody:root`` nor ``65534``. A user pattern never reaches across the
  ``:`` of ``user:group``: ``10*`` does not allow ``10:root``; write
  ``10*:10*`` (or ``*:*``) to allow groups.
* ``max_timeout``: a request without a timeout, or with a larger one, is
  denied (not clamped: the caller sees why and sets one).
* Omitted fields allow nothing: no ``containers`` / ``users`` means the rule
  allows no exec at all (only the requests that need just the agent).

An allowed request gets the rule that allowed it (``Policy.check_exec``) or the
rules that let the caller use the agent (``Policy.check_agent``). Denials
raise :class:`PolicyDenied` (``forbidden``); the consumer answers
the caller and dead-letters the request with the reason (never with env
values or stdin). The policy file is read by ``worker/policy_file.py``, the
size limits are ``worker/limits.py``, and ``worker/guard.py`` applies both to
every request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from execbus.errors import ErrorCode, Forbidden
from execbus.wire.config import ExecConfig

RULE_FIELDS = frozenset(
    {"name", "callers", "agents", "containers", "users", "privileged", "max_timeout", "all_execs"}
)
MAX_REASONS = 3


class PolicyDenied(Forbidden):
    """The policy does not allow this caller to do this (``forbidden``)."""

    code = ErrorCode.FORBIDDEN


def _matches(value: str, patterns: Sequence[str]) -> bool:
    if value == "":
        return "" in patterns
    return any(p != "" and fnmatchcase(value, p) for p in patterns)


def _matches_user(value: str, patterns: Sequence[str]) -> bool:
    """Like :func:`_matches`, but a glob never reaches across ``user:group``'s colon."""
    if value == "" or (not any(":" in p for p in patterns) and ":" not in value):
        return _matches(value, patterns)
    user, sep, group = value.partition(":")
    for pattern in patterns:
        p_user, p_sep, p_group = pattern.partition(":")
        same_shape = pattern != "" and bool(sep) == bool(p_sep)
        if same_shape and fnmatchcase(user, p_user) and (not sep or fnmatchcase(group, p_group)):
            return True
    return False


def _shown(patterns: Sequence[str]) -> str:
    return "[" + ", ".join(repr(p) for p in patterns) + "]"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]`` of a policy."""

    label: str
    callers: tuple[str, ...]
    agents: tuple[str, ...]
    containers: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    privileged: bool = False
    max_timeout: float | None = None
    all_execs: bool = False

    def names(self, caller: str) -> bool:
        return _matches(caller, self.callers)

    def covers(self, agent: str) -> bool:
        return _matches(agent, self.agents)

    def refusal(self, config: ExecConfig) -> str | None:
        """Why this rule does not allow ``config`` (None: it does)."""
        container = config.container_id
        if not _matches(container, self.containers):
            what = f"container {container!r}" if container else "the agent's host (container '')"
            return f"{what} is not allowed (containers: {_shown(self.containers)})"
        user = config.user or ""
        if not _matches_user(user, self.users):
            what = f"user {user!r}" if user else "the default user (user '')"
            return f"{what} is not allowed (users: {_shown(self.users)})"
        if config.privileged and not self.privileged:
            return "privileged execs are not allowed"
        if self.max_timeout is not None:
            if config.timeout is None:
                return f"a timeout is required (at most {self.max_timeout:g} s)"
            if config.timeout > self.max_timeout:
                return f"timeout {config.timeout:g} s is above max_timeout {self.max_timeout:g} s"
        return None


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules of a policy file; see the module documentation."""

    rules: tuple[Rule, ...]
    source: str = "<policy>"

    def _candidates(self, caller: str, agent: str) -> list[Rule]:
        named = [r for r in self.rules if r.names(caller)]
        if not named:
            raise PolicyDenied(f"caller {caller!r} is not allowed by this worker's policy")
        rules = [r for r in named if r.covers(agent)]
        if not rules:
            raise PolicyDenied(f"caller {caller!r} may not use agent {agent!r}")
        return rules

    def check_agent(self, caller: str, agent: str) -> tuple[Rule, ...]:
        """Allowed when some rule names the caller and the agent: those rules."""
        return tuple(self._candidates(caller, agent))

    def sees_all_execs(self, caller: str, agent: str) -> bool:
        """May ``caller`` act on other callers' execs on ``agent`` (``all_execs``)?"""
        return any(r.all_execs and r.names(caller) and r.covers(agent) for r in self.rules)

    def check_exec(self, caller: str, agent: str, config: ExecConfig) -> Rule:
        """Allowed when some rule for the caller and agent allows all of ``config``: the
        first such rule (its ``label`` says which)."""
        reasons = []
        for rule in self._candidates(caller, agent):
            why = rule.refusal(config)
            if why is None:
                return rule
            reasons.append(f"{rule.label}: {why}")
        more = f"; and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
        raise PolicyDenied(
            f"caller {caller!r} may not run this exec on agent {agent!r}: "
            + "; ".join(reasons[:MAX_REASONS])
            + more
        )
