"""Process helpers shared by the local-node launcher and the re-index lock."""

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
