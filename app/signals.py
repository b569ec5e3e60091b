"""Stop on SIGTERM or Ctrl-C by unwinding first, then die of the signal that was sent.

By default SIGTERM kills a Python process on the spot: no ``finally`` runs, so a training under
torchrun (which sends SIGTERM to every worker when one fails, or when a scheduler stops the job)
would leave its data-loader workers to notice on their own, lose TensorBoard events not yet flushed
and never leave its process group. Inside :func:`exit_by_signal_after_cleanup` the first SIGTERM
raises :class:`Terminated` (as Ctrl-C raises KeyboardInterrupt) in the main thread; when the block
has unwound, the process ends by the same signal, so its parent (torchrun, a shell, a scheduler)
sees the real cause: killed by SIGTERM or SIGINT, not a generic exit code 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "exit_by_signal_after_cleanup"]


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so ``except Exception`` lets it pass."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum: int, _frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM during the clean-up kills at once
    raise Terminated(signum)


@contextlib.contextmanager
def exit_by_signal_after_cleanup() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the block; after it unwound, die of the signal.

    The same for Ctrl-C (KeyboardInterrupt): the process then dies of SIGINT, as CPython itself
    does for an uncaught KeyboardInterrupt. Only in the main thread (elsewhere signals stay as
    they are). The previous SIGTERM handler is restored when the block ends normally.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        yield
    except Terminated as e:
        _die_of(e.signum)
        raise
    except KeyboardInterrupt:
        _die_of(signal.SIGINT)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _die_of(signum: int) -> None:
    """End the process by ``signum`` with its default action (returns only if that did not kill)."""
    print(f"stopped by {signal.Signals(signum).name} (cleaned up first)", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
