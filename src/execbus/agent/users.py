"""Resolution of ``user`` specs the way ``docker exec --user`` does it.

Accepted forms: ``name``, ``uid``, ``name:group``, ``uid:gid`` (and mixes). A
name must exist in the user database; a numeric uid may be unknown (it then
runs with gid 0 and HOME ``/``, as in Docker). Without an explicit group the
process gets the user's primary group plus every group that lists the user as
a member; with an explicit group it gets that group only.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import field
from typing import Protocol

from execbus.agent.compat import slots_dataclass
from execbus.agent.errors import UNKNOWN_USER, StartFailure

_MAX_ID = 2**31 - 1


@slots_dataclass(frozen=True)
class UserEntry:
    """One passwd entry."""

    name: str
    uid: int
    gid: int
    home: str


@slots_dataclass(frozen=True)
class GroupEntry:
    """One group entry."""

    name: str
    gid: int
    members: tuple[str, ...] = field(default=())


@slots_dataclass(frozen=True)
class ResolvedUser:
    """Credentials to run a process with."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class UserDB(Protocol):
    """A passwd/group database: the host's (NSS) or a container's files."""

    def user(self, key: str | int) -> UserEntry | None: ...

    def group(self, key: str | int) -> GroupEntry | None: ...

    def member_groups(self, user: UserEntry) -> list[int]: ...


class HostUserDB:
    """The host's users through ``pwd``/``grp`` (so NSS sources work too)."""

    def user(self, key: str | int) -> UserEntry | None:
        try:
            e = pwd.getpwuid(key) if isinstance(key, int) else pwd.getpwnam(key)
        except (KeyError, OverflowError):
            return None
        return UserEntry(e.pw_name, e.pw_uid, e.pw_gid, e.pw_dir)

    def group(self, key: str | int) -> GroupEntry | None:
        try:
            e = grp.getgrgid(key) if isinstance(key, int) else grp.getgrnam(key)
        except (KeyError, OverflowError):
            return None
        return GroupEntry(e.gr_name, e.gr_gid, tuple(e.gr_mem))

    def member_groups(self, user: UserEntry) -> list[int]:
        return os.getgrouplist(user.name, user.gid)


class FileUserDB:
    """Users and groups read from ``etc/passwd`` and ``etc/group`` under a root."""

    def __init__(self, root: str) -> None:
        self._users = [_user_line(f) for f in _lines(root, "etc/passwd")]
        self._groups = [_group_line(f) for f in _lines(root, "etc/group")]

    def user(self, key: str | int) -> UserEntry | None:
        return next((u for u in self._users if u and key in (u.name, u.uid)), None)

    def group(self, key: str | int) -> GroupEntry | None:
        return next((g for g in self._groups if g and key in (g.name, g.gid)), None)

    def member_groups(self, user: UserEntry) -> list[int]:
        return [user.gid] + [g.gid for g in self._groups if g and user.name in g.members]


def resolve_user(spec: str, db: UserDB) -> ResolvedUser:
    """Resolve ``spec`` (not empty) against ``db``; raises ``unknown_user``."""
    user_part, _, group_part = spec.partition(":")
    entry = db.user(_key(user_part))
    if entry is None:
        uid = _numeric(user_part)
        if uid is None:
            raise StartFailure(UNKNOWN_USER, f"unable to find user {user_part!r} in passwd")
        entry = UserEntry("", uid, 0, "/")
    if group_part:
        gid = _resolve_group(group_part, db)
        return ResolvedUser(entry.uid, gid, (gid,), entry.home)
    groups = db.member_groups(entry) if entry.name else [entry.gid]
    return ResolvedUser(entry.uid, entry.gid, tuple(dict.fromkeys(groups)), entry.home)


def _resolve_group(spec: str, db: UserDB) -> int:
    entry = db.group(_key(spec))
    if entry is not None:
        return entry.gid
    gid = _numeric(spec)
    if gid is None:
        raise StartFailure(UNKNOWN_USER, f"unable to find group {spec!r} in the group database")
    return gid


def _key(part: str) -> str | int:
    number = _numeric(part)
    return part if number is None else number


def _numeric(part: str) -> int | None:
    if part.isdigit() and part.isascii() and int(part) <= _MAX_ID:
        return int(part)
    return None


def _user_line(line: str) -> UserEntry | None:
    parts = line.split(":")
    if len(parts) < 6 or _numeric(parts[2]) is None or _numeric(parts[3]) is None:
        return None
    return UserEntry(parts[0], int(parts[2]), int(parts[3]), parts[5] or "/")


def _group_line(line: str) -> GroupEntry | None:
    parts = line.split(":")
    if len(parts) < 4 or _numeric(parts[2]) is None:
        return None
    members = tuple(m for m in parts[3].split(",") if m)
    return GroupEntry(parts[0], int(parts[2]), members)


def _lines(root: str, relpath: str) -> list[str]:
    path = resolve_in_root(root, relpath)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(16 * 1024 * 1024)
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def resolve_in_root(root: str, relpath: str) -> str:
    """``root/relpath`` with symlinks resolved as if ``root`` were ``/``.

    A container's ``/etc/passwd`` may be a symlink; following it on the host
    must never leave the container's root filesystem.
    """
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved[:-1]
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate) and hops < 40:
            hops += 1
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)
