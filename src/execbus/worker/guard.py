"""The authorization hook of every request: the policy, exec ownership and the limits.

Built once per worker; :meth:`RequestGuard.for_agent` makes the ``authorize``
hook of one agent's consumer, which runs in the exec's lane before the
request touches the registry or the agent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

from execbus.registry import ExecRegistry
from execbus.settings import Settings
from execbus.wire.config import ExecConfig
from execbus.wire.requests import CreateRequest, Request, RunRequest, StartRequest
from execbus.worker.context import RequestContext
from execbus.worker.limits import RequestLimits
from execbus.worker.policy import Policy, PolicyDenied
from execbus.worker.policy_file import load_policy

log = logging.getLogger("execbus.worker")

Authorize = Callable[[Request, RequestContext], Awaitable[RequestContext]]


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
        self.policy.check_agent(caller, agent)  # first: is this caller here at all
        exec_id = getattr(request, "exec_id", None)
        record = registry.find(exec_id) if exec_id else None
        theirs = record is not None and record.owner != caller
        if theirs and not self.policy.sees_all_execs(caller, agent):
            raise PolicyDenied(f"exec {exec_id!r} belongs to another caller")
        if isinstance(request, StartRequest):
            config = record.config if record is not None else None
        if config is not None:
            self.policy.check_exec(caller, agent, config)
