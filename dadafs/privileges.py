"""Dropping root after start-up: ``user = "NAME"`` in a daemon's configuration (``--user``).

A daemon started as root does everything that needs root first (bind the port, open the export
roots or the cache directories, read the key), then switches to the configured user and group for
good: supplementary groups, gid, uid (real, effective and saved), so it cannot switch back. What
it still needs afterwards is ordinary access: the origin reads below its export roots as that user
(the roots themselves were opened as root, so their parent directories need not be reachable); the
proxy reads and writes its cache directories, which it hands to the user before dropping.
``PR_SET_NO_NEW_PRIVS`` is set too, so nothing it could execute regains privileges.

The FUSE client does not drop privileges: pyfuse3 unmounts through the kernel at exit, which needs
the privileges the mount was made with.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
from pathlib import Path

from .util import ConfigError

log = logging.getLogger("dadafs")

_PR_SET_NO_NEW_PRIVS = 38


def resolve_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a user name or number; a clear error for an unknown one."""
    try:
        pw = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        raise ConfigError(f"user {name!r} does not exist") from None
    return pw.pw_uid, pw.pw_gid


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give a (cache) directory and everything in it to ``uid:gid``, without following links."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


def drop_privileges(name: str) -> None:
    """Become ``name`` for good. Without root this only checks we already are that user."""
    uid, gid = resolve_user(name)
    if os.geteuid() != 0:
        if os.geteuid() != uid:
            raise ConfigError(f"cannot switch to user {name!r}: not started as root")
        return
    user = pwd.getpwuid(uid).pw_name
    groups = sorted(set(os.getgrouplist(user, gid)))
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would be a kernel or libc bug
        raise ConfigError("privileges could be regained after dropping them; refusing to run")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    names = ",".join(grp.getgrgid(g).gr_name for g in groups)
    log.info("dropped privileges to %s (uid %d, gid %d, groups %s)", user, uid, gid, names)
