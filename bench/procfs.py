"""What /proc says about a benchmarked process and its descendants (shared by the bench scripts)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def proc_tree(pid: int) -> list[int]:
    """The process and its live descendants (with --capture-mode process: the capture helper too)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
    return out
