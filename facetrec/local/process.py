"""Process helpers shared by the local-node and Spark cluster launchers and the re-index lock."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """True if a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(pid: int) -> bool:
    """Like ``pid_exists``, but a child of ours that has exited (a zombie) is reaped and counts as gone."""
    if not pid_exists(pid):
        return False
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:   # not our child: it exists
        return True
