"""No child process outlives its parent: the kernel signals the child when the parent dies.

Linux's prctl(PR_SET_PDEATHSIG) is set in the child between fork and exec (subprocess's
preexec_fn). It fires even when the parent is killed with SIGKILL, where no cleanup code of
ours runs. Used for the gateway's Mosquitto (edge/ingest/mqtt/broker.py) and the demo's
cloud and CLI children (edge/app/demo_cloud.py).

The signal is sent when the *thread* that started the child ends, so start such children from
a thread that lives as long as the process (the main thread, or the event loop's).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that asks for `sig` when the parent dies; None where Linux's prctl is
    missing (then the child is on its own, as before)."""
    if not sys.platform.startswith("linux"):
        return None
    # resolved here, in the parent: the child between fork and exec only calls it
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os.kill(os.getpid(), sig)

    return preexec
