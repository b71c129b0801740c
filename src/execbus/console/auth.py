"""Logins for ``--allow-control``: the broker checks the credentials, the console keeps sessions.

A login opens an SDK :class:`~execbus.Client` as that AMQP user (the
console's broker URL with the user's name and password). If the broker
accepts it, the session keeps that client, server-side, and every control
action (a signal) is published by it: the message's ``user_id`` is that user,
so the workers' policy decides what it may do. The browser holds only an
opaque random token (an HttpOnly, SameSite=Strict cookie) and a CSRF token
it must echo in a header on every POST.

Failed logins are slowed down (one attempt at a time, a pause after a
failure); sessions expire after ``idle`` seconds unused or ``lifetime`` in
all, and at most ``max_sessions`` live at once (the oldest goes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from execbus.client import Client
from execbus.errors import BrokerRefused, BrokerUnavailable
from execbus.settings import Settings

FAILURE_PAUSE = 1.0
MAX_CREDENTIAL = 512


class LoginFailed(Exception):
    """The broker refused the credentials (or they were not usable)."""


class LoginUnavailable(Exception):
    """The broker could not be asked."""


def user_url(url: str, user: str, password: str) -> str:
    """``url`` authenticating as ``user``/``password`` (host, port, vhost and query kept)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}{port}"))


@dataclass(slots=True)
class Session:
    token: str
    user: str
    csrf: str
    client: Client
    created: float
    last_used: float = field(default=0.0)

    def csrf_ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


Connector = Callable[[str, str], Awaitable[Client]]


class Sessions:
    """Logged-in users, each with its own broker connection."""

    def __init__(
        self,
        settings: Settings,
        *,
        idle: float = 1800.0,
        lifetime: float = 12 * 3600.0,
        max_sessions: int = 64,
        connect: Connector | None = None,
        clock: Callable[[], float] = time.monotonic,
        failure_pause: float = FAILURE_PAUSE,
    ) -> None:
        self.settings = settings
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._connect = connect or self._connect_as
        self._clock = clock
        self._pause = failure_pause
        self._sessions: dict[str, Session] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    async def _connect_as(self, user: str, password: str) -> Client:
        client = Client(user_url(self.settings.amqp_url, user, password), settings=self.settings)
        try:
            await client.connect()
        except BrokerRefused as exc:
            raise LoginFailed("the broker refused these credentials") from exc
        except BrokerUnavailable as exc:
            raise LoginUnavailable(exc.message) from exc
        return client

    async def login(self, user: str, password: str) -> Session:
        """Check ``user``/``password`` with the broker; a new session, or :class:`LoginFailed`."""
        if not user or not password or len(user) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL:
            raise LoginFailed("a user name and a password are needed")
        async with self._lock:  # one attempt at a time: guessing stays slow
            try:
                client = await self._connect(user, password)
            except LoginFailed:
                await asyncio.sleep(self._pause)
                raise
            now = self._clock()
            session = Session(
                token=secrets.token_urlsafe(32),
                user=user,
                csrf=secrets.token_urlsafe(32),
                client=client,
                created=now,
                last_used=now,
            )
            self._sessions[session.token] = session
            while len(self._sessions) > self.max_sessions:
                oldest = min(self._sessions.values(), key=lambda s: s.last_used)
                await self._end(oldest.token)
            return session

    def lookup(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its idle timer restarts), or None."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self.idle or now - session.created > self.lifetime:
            self._sessions.pop(token, None)
            task = asyncio.get_running_loop().create_task(session.client.close())
            task.add_done_callback(lambda t: t.exception())
            return None
        session.last_used = now
        return session

    async def logout(self, token: str | None) -> None:
        if token:
            await self._end(token)

    async def _end(self, token: str) -> None:
        session = self._sessions.pop(token, None)
        if session is not None:
            with contextlib.suppress(Exception):
                await session.client.close()

    async def close(self) -> None:
        for token in list(self._sessions):
            await self._end(token)
