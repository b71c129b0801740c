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

Denials raise :class:`PolicyDenied` (``forbidden``); the consumer answers
the caller and dead-letters the request with the reason. Limits on the size
of requests raise :class:`RequestTooLarge` (``limit_exceeded``), also
dead-lettered. Neither message ever contains env values or stdin.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from execbus.errors import ConfigError, ErrorCode, Forbidden, InvalidRequest, LimitExceeded
from execbus.registry import ExecRegistry
from execbus.settings import Settings
from execbus.wire.config import ExecConfig
from execbus.wire.requests import CreateRequest, Request, RunRequest, StartRequest
from execbus.worker.execs import RequestContext

log = logging.getLogger("execbus.worker")

Authorize = Callable[[Request, RequestContext], Awaitable[RequestContext]]

RULE_FIELDS = frozenset(
    {"name", "callers", "agents", "containers", "users", "privileged", "max_timeout", "all_execs"}
)
MAX_REASONS = 3


# The consumer dead-letters InvalidRequest raised by its authorize hook; these
# are InvalidRequest too so they are, while their code stays their own.
class PolicyDenied(Forbidden, InvalidRequest):
    """The policy does not allow this caller to do this (``forbidden``)."""

    code = ErrorCode.FORBIDDEN


class RequestTooLarge(LimitExceeded, InvalidRequest):
    """The request is over one of this worker's size limits (``limit_exceeded``)."""

    code = ErrorCode.LIMIT_EXCEEDED


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

    def check_agent(self, caller: str, agent: str) -> None:
        """Allowed when some rule names the caller and the agent."""
        self._candidates(caller, agent)

    def sees_all_execs(self, caller: str, agent: str) -> bool:
        """May ``caller`` act on other callers' execs on ``agent`` (``all_execs``)?"""
        return any(r.all_execs and r.names(caller) and r.covers(agent) for r in self.rules)

    def check_exec(self, caller: str, agent: str, config: ExecConfig) -> None:
        """Allowed when some rule for the caller and agent allows all of ``config``."""
        reasons = []
        for rule in self._candidates(caller, agent):
            why = rule.refusal(config)
            if why is None:
                return
            reasons.append(f"{rule.label}: {why}")
        more = f"; and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
        raise PolicyDenied(
            f"caller {caller!r} may not run this exec on agent {agent!r}: "
            + "; ".join(reasons[:MAX_REASONS])
            + more
        )


# -- loading -------------------------------------------------------------


def load_policy(path: Path | str) -> Policy:
    """Read a policy file (``.toml``, or ``.yaml``/``.yml``); ConfigError when it is bad."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the policy file {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        doc = _load_yaml(text, path)
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    return parse_policy(doc, str(path))


def _load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"policy file {path}: YAML policies need PyYAML installed; or write it in TOML"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from None


def parse_policy(doc: Any, source: str = "<policy>") -> Policy:
    """Validate a parsed policy document (strictly: unknown keys are errors)."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"policy {source}: expected a table/mapping with a 'rule' list")
    unknown = set(doc) - {"rule", "rules"}
    if unknown:
        raise ConfigError(f"policy {source}: unknown keys {sorted(map(str, unknown))}")
    if "rule" in doc and "rules" in doc:
        raise ConfigError(f"policy {source}: give 'rule' or 'rules', not both")
    entries = doc.get("rule", doc.get("rules", []))
    if not isinstance(entries, list):
        raise ConfigError(f"policy {source}: 'rule' must be a list of tables ([[rule]])")
    rules = tuple(_parse_rule(entry, i, source) for i, entry in enumerate(entries, 1))
    return Policy(rules, source)


def _parse_rule(entry: Any, index: int, source: str) -> Rule:
    where = f"policy {source}: rule #{index}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table of callers, agents, ...")
    unknown = set(entry) - RULE_FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown fields {sorted(map(str, unknown))} "
            f"(known: {', '.join(sorted(RULE_FIELDS))})"
        )
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    label = f"rule {name!r}" if name else f"rule #{index}"
    for required in ("callers", "agents"):
        if required not in entry:
            raise ConfigError(f"{where}: '{required}' is required")
    privileged = entry.get("privileged", False)
    if not isinstance(privileged, bool):
        raise ConfigError(f"{where}: privileged must be true or false")
    all_execs = entry.get("all_execs", False)
    if not isinstance(all_execs, bool):
        raise ConfigError(f"{where}: all_execs must be true or false")
    return Rule(
        label=label,
        callers=_patterns(entry["callers"], f"{where}: callers", allow_empty=False),
        agents=_patterns(entry["agents"], f"{where}: agents", allow_empty=False),
        containers=_patterns(entry.get("containers", []), f"{where}: containers"),
        users=_patterns(entry.get("users", []), f"{where}: users", numbers=True),
        privileged=privileged,
        max_timeout=_timeout(entry.get("max_timeout"), where),
        all_execs=all_execs,
    )


def _patterns(
    value: Any, where: str, *, allow_empty: bool = True, numbers: bool = False
) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of patterns")
    out = []
    for item in value:
        if numbers and isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            item = str(item)  # users = [1000] means the uid "1000"
        if not isinstance(item, str):
            raise ConfigError(f"{where}: {item!r} is not a string")
        if item == "" and not allow_empty:
            raise ConfigError(f"{where}: the empty pattern is not allowed here")
        out.append(item)
    if not allow_empty and not out:
        raise ConfigError(f"{where} must not be empty")
    return tuple(out)


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where}: max_timeout must be a positive number of seconds")
    return float(value)


# -- limits --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Sizes this worker accepts in an exec's configuration (``EXECBUS_MAX_*``).

    The wire contract has fixed upper bounds (``execbus.wire.config``); these
    let an operator go lower. Checked before the agent is touched.
    """

    max_argv_entries: int
    max_argv_bytes: int
    max_env_entries: int
    max_env_bytes: int
    max_output_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_argv_entries=settings.max_argv_entries,
            max_argv_bytes=settings.max_argv_bytes,
            max_env_entries=settings.max_env_entries,
            max_env_bytes=settings.max_env_bytes,
            max_output_limit=settings.max_output_limit,
        )

    def check(self, config: ExecConfig) -> None:
        """Raise :class:`RequestTooLarge` naming the limit and its setting (never a value)."""
        _at_most(len(config.cmd), self.max_argv_entries, "cmd has {} arguments", "ARGV_ENTRIES")
        _at_most(_size(config.cmd), self.max_argv_bytes, "cmd is {} bytes", "ARGV_BYTES")
        _at_most(len(config.env), self.max_env_entries, "env has {} entries", "ENV_ENTRIES")
        _at_most(_size(config.env), self.max_env_bytes, "env is {} bytes", "ENV_BYTES")
        _at_most(
            config.output_limit, self.max_output_limit, "output_limit is {} bytes", "OUTPUT_LIMIT"
        )


def _size(items: Iterable[str]) -> int:
    return sum(len(item.encode()) for item in items)


def _at_most(value: int, limit: int, what: str, setting: str) -> None:
    if value > limit:
        raise RequestTooLarge(
            f"{what.format(value)}; this worker accepts at most {limit} (EXECBUS_MAX_{setting})"
        )


# -- the hook ------------------------------------------------------------


class RequestGuard:
    """Authorization and limits of every request, built once per worker.

    :meth:`for_agent` makes the ``authorize`` hook of one agent's consumer;
    it runs in the exec's lane, before the request touches the registry or
    the agent.
    """

    def __init__(self, policy: Policy | None, limits: RequestLimits) -> None:
        self.policy = policy
        self.limits = limits

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestGuard:
        """Load ``EXECBUS_POLICY_FILE`` (ConfigError when it is bad)."""
        policy = load_policy(settings.policy_file) if settings.policy_file else None
        return cls(policy, RequestLimits.from_settings(settings))

    def startup_warning(self) -> str | None:
        """What to warn about at startup (no policy: everyone may do everything)."""
        if self.policy is None:
            return (
                "no authorization policy (EXECBUS_POLICY_FILE / --policy-file): every caller "
                "that can publish to the requests exchange may run any command, as any user, "
                "on every agent of this worker; see docs/security.md"
            )
        if not self.policy.rules:
            return f"the policy {self.policy.source} has no rules: every request is denied"
        return None

    def for_agent(self, agent: str, registry: ExecRegistry) -> Authorize:
        """The consumer hook of ``agent`` (``registry``: for the config of a start)."""

        async def authorize(request: Request, ctx: RequestContext) -> RequestContext:
            return self.check(agent, registry, request, ctx)

        return authorize

    def check(
        self, agent: str, registry: ExecRegistry, request: Request, ctx: RequestContext
    ) -> RequestContext:
        """Raise :class:`PolicyDenied` or :class:`RequestTooLarge`; when allowed, the
        context to handle the request with (``owner``: the caller sees only its execs)."""
        config = request.config if isinstance(request, CreateRequest | RunRequest) else None
        if self.policy is not None:
            try:
                self._authorize(agent, registry, request, ctx.user_id, config)
                if not self.policy.sees_all_execs(ctx.user_id or "", agent):
                    ctx = dataclasses.replace(ctx, owner=ctx.user_id)
            except PolicyDenied as exc:
                log.warning(
                    "denied %s from caller %r on agent %s: %s",
                    request.type,
                    ctx.user_id,
                    agent,
                    exc.message,
                    extra={"agent": agent, "exec_id": getattr(request, "exec_id", None)},
                )
                raise
        if config is not None:
            self.limits.check(config)
        return ctx

    def _authorize(
        self,
        agent: str,
        registry: ExecRegistry,
        request: Request,
        caller: str | None,
        config: ExecConfig | None,
    ) -> None:
        assert self.policy is not None
        if not caller:
            raise PolicyDenied(
                "the request has no user_id: this worker authorizes callers by the AMQP "
                "user_id property, which must be set to the publishing RabbitMQ user"
            )
        exec_id = getattr(request, "exec_id", None)
        record = registry.find(exec_id) if exec_id else None
        theirs = record is not None and record.owner != caller
        if theirs and not self.policy.sees_all_execs(caller, agent):
            raise PolicyDenied(f"exec {exec_id!r} belongs to another caller")
        if isinstance(request, StartRequest):
            config = record.config if record is not None else None
        if config is None:
            self.policy.check_agent(caller, agent)
        else:
            self.policy.check_exec(caller, agent, config)
