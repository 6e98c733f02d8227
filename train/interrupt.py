"""Ctrl-C acted on between batches.

A KeyboardInterrupt raised wherever the main thread happens to be can land inside a lock
(tqdm's, logging's) or in a DataLoader's bookkeeping and leave the process hanging at exit.
So the first SIGINT only asks: training and prediction stop at the next batch boundary,
where nothing is half done. A second SIGINT interrupts at once. Under torchrun every rank
is interrupted at once as before: ranks stopping at different batches would leave the
others waiting in a collective.
"""

from __future__ import annotations

import signal
import threading


class Interrupts:
    """While entered (in the main thread), SIGINT sets `requested`; `check` raises
    KeyboardInterrupt at a safe point once it is set."""

    def __init__(self, deferred: bool = True) -> None:
        self.deferred = deferred
        self.requested = False
        self._previous = None

    def __enter__(self) -> Interrupts:
        main_thread = threading.current_thread() is threading.main_thread()
        # A process started with SIGINT ignored (nohup, `cmd &` in a script) stays deaf to it.
        if self.deferred and main_thread and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._ask)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _ask(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt
