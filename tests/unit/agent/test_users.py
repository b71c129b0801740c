"""User databases, also inside a container's root (``agent/users.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from execbus.agent.errors import StartFailure
from execbus.agent.users import FileUserDB, resolve_in_root, resolve_user


def test_container_user_database_stays_inside_the_root(tmp_path: Path) -> None:
    tmp_dir = str(tmp_path)
    etc = os.path.join(tmp_dir, "etc")
    os.makedirs(os.path.join(tmp_dir, "data"))
    os.makedirs(etc)
    with open(os.path.join(tmp_dir, "data", "passwd"), "w") as f:
        f.write("app:x:1000:1000::/home/app:/bin/sh\n# comment\nbroken-line\n")
    with open(os.path.join(tmp_dir, "data", "group"), "w") as f:
        f.write("app:x:1000:\nwheel:x:10:app,other\n")
    os.symlink("/data/passwd", os.path.join(etc, "passwd"))  # absolute, as inside the root
    os.symlink("../../../../../data/group", os.path.join(etc, "group"))
    assert resolve_in_root(tmp_dir, "etc/passwd") == os.path.join(tmp_dir, "data", "passwd")
    assert resolve_in_root(tmp_dir, "etc/group") == os.path.join(tmp_dir, "data", "group")
    db = FileUserDB(tmp_dir)
    app = resolve_user("app", db)
    assert (app.uid, app.gid, app.groups, app.home) == (1000, 1000, (1000, 10), "/home/app")
    assert resolve_user("app:wheel", db).groups == (10,)
    assert resolve_user("1000:10", db).gid == 10
    with pytest.raises(StartFailure):
        resolve_user("root", db)
