"""A real OCI container for tests and benchmarks: busybox under a private runc root.

Needs root, ``runc`` and a statically linked ``/bin/busybox`` (Debian's
``busybox-static``); :func:`unavailable` says which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def unavailable() -> str | None:
    """Why a container cannot be made here, or None."""
    if os.geteuid() != 0:
        return "runc containers need root"
    if shutil.which("runc") is None:
        return "runc is not on PATH"
    if not BUSYBOX.exists():
        return f"no {BUSYBOX} (busybox-static) to build a rootfs"
    return None


class BusyboxContainer:
    """``sleep 1000`` in a busybox rootfs, run detached under ``<workdir>/runc-state``.

    The agent reaches it with ``--runc-root <root>`` and ``container_id=<id>``.
    """

    def __init__(self, workdir: Path, container_id: str | None = None) -> None:
        self.root = workdir / "runc-state"
        self.bundle = workdir / "bundle"
        self.id = container_id or f"ctr-{uuid.uuid4().hex[:8]}"
        self.started = False

    def create(self) -> BusyboxContainer:
        """Build the rootfs and bundle, then ``runc run -d``."""
        rootfs = self.bundle / "rootfs"
        bindir = rootfs / "bin"
        bindir.mkdir(parents=True)
        for d in ("proc", "dev", "sys", "tmp", "etc"):
            (rootfs / d).mkdir()
        shutil.copy2(BUSYBOX, bindir / "busybox")
        applets = subprocess.run(
            [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        subprocess.run(["runc", "spec"], cwd=self.bundle, check=True, capture_output=True)
        config_path = self.bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["args"] = ["sleep", "1000"]
        config["process"]["terminal"] = False
        config["root"]["readonly"] = False
        config_path.write_text(json.dumps(config, indent=2))
        self.started = True
        # The detached container inherits runc's stdio: never a pipe (EOF would never come).
        errors = self.bundle.parent / "runc-run.err"
        with open(errors, "wb") as err:
            argv = ["runc", "--root", str(self.root), "run", "-d", "--bundle", str(self.bundle)]
            proc = subprocess.run(
                [*argv, self.id],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=30,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"runc run failed: {errors.read_text(errors='replace').strip()}")
        return self

    def delete(self) -> None:
        """``runc delete -f`` (idempotent)."""
        if self.started:
            self.started = False
            subprocess.run(
                ["runc", "--root", str(self.root), "delete", "-f", self.id],
                capture_output=True,
                timeout=30,
                check=False,
            )
