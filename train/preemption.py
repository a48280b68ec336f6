"""Preemption: SIGTERM/SIGINT become a request that the loop honours after the current step.

Single process: the first SIGTERM or SIGINT sets a flag; the loop finishes the step it is in,
saves a checkpoint, writes its metrics and returns `preempted=True` (launch/run.py exits 0 with
the command that resumes). A second signal of the same kind gets Python's default behaviour
(a second Ctrl-C interrupts at once).

Multiple processes (Cloud TPU pods, multi-host GPU): hosts must save at the *same* step, so the
decision is JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`), which
the distributed runtime drives from the SIGTERM the scheduler sends to any host. Python's SIGTERM
handler is then left alone, because replacing it would hide the notice from that runtime, and
SIGINT keeps its default (KeyboardInterrupt): a local signal cannot make the other hosts stop.

`active()` is re-entrant: a sweep holds it across its points, and each point's loop reuses it, so a
signal between two points stops the sweep before the next point starts.
"""

import contextlib
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
    """Polled once per step: `requested(step)` says whether to checkpoint and stop now."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "Preemption":
        """Installs the handlers (main thread only; elsewhere signals keep their behaviour)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        if jax.process_count() > 1:
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        self.signum = signum
        # The next signal of this kind acts as if we were not here (e.g. a second Ctrl-C).
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        logging.warning("received %s: stopping after this step", signal.Signals(signum).name)

    def requested(self, step: int) -> bool:
        """True once a signal arrived (one process) or all hosts reached the sync point."""
        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signum = self.signum or signal.SIGTERM
                    return True
            except RuntimeError:  # jax_enable_preemption_service is off
                logging.log_first_n(
                    logging.WARNING, "no preemption sync point: not saving on SIGTERM", 1
                )
            return False
        return self.signum is not None

    def uninstall(self) -> None:
        """Restores the handlers that were there before `install`."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._previous = {}


_GUARD = Preemption()
_depth = 0


@contextlib.contextmanager
def active():
    """The process's preemption guard, installed while any `active()` block is open."""
    global _depth
    if _depth == 0:
        _GUARD.signum = None
        _GUARD.install()
    _depth += 1
    try:
        yield _GUARD
    finally:
        _depth -= 1
        if _depth == 0:
            _GUARD.uninstall()
