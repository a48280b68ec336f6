"""Console progress: a tqdm bar on a terminal, plain rate-limited lines in CI logs."""

import sys
import time
from typing import Any

from tqdm import tqdm

# Metric names as the loop writes them (DESIGN.md); `perf/mfu` is a fraction, shown as a percent.
LOSS, TOKENS_PER_S, MFU = "train/loss", "perf/tokens_per_s", "perf/mfu"


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    if LOSS in metrics:
        parts.append(f"loss={float(metrics[LOSS]):.4f}")
    if TOKENS_PER_S in metrics:
        parts.append(f"tok/s={tqdm.format_sizeof(float(metrics[TOKENS_PER_S]))}")
    if MFU in metrics:
        parts.append(f"mfu={100 * float(metrics[MFU]):.1f}%")
    return " ".join(parts)


class Progress:
    """Training progress for the process that logs; `enabled=False` prints nothing.

    On a TTY this is a tqdm bar with the step, loss, tokens/s, MFU and tqdm's ETA. Otherwise (CI,
    log files, where carriage returns make a mess) it prints one plain line on the first and last
    update and otherwise once both `log_every` updates and `min_interval_s` seconds have passed
    since the previous line.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        desc: str = "train",
        *,
        log_every: int = 1,
        min_interval_s: float = 10.0,
        tty: bool | None = None,
    ):
        """Starts the clock.

        Args:
          total_steps: Step at which training ends.
          start_step: Step training (re)starts from.
          enabled: False on non-zero processes.
          desc: Label in front of the bar or lines.
          log_every: Non-TTY mode: minimum number of updates between lines.
          min_interval_s: Non-TTY mode: minimum seconds between lines.
          tty: Force bar (True) or plain lines (False); None asks `sys.stdout.isatty()`.
        """
        self.enabled = enabled
        self.total, self.desc = total_steps, desc
        self.log_every, self.min_interval_s = max(1, log_every), min_interval_s
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._bar = None
        self._start_time = time.monotonic()
        self._first: tuple[int, float] | None = None  # (step, time) of the first update.
        self._last_line_time = -float("inf")
        self._updates_since_line = 0
        if enabled and self.tty:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc=desc,
                file=sys.stdout,
                dynamic_ncols=True,
            )

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Reports that `step` is done, with its metrics (missing names are left out).

        Args:
          step: Training step just finished.
          metrics: Scalars by name; reads `train/loss`, `perf/tokens_per_s`, `perf/mfu`.
        """
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(_summary(metrics), refresh=False)
            self._bar.update(step - self._bar.n)
            return
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
        self._updates_since_line += 1
        due = (
            self._updates_since_line >= self.log_every
            and now - self._last_line_time >= self.min_interval_s
        )
        if not (due or step == self._first[0] or step >= self.total):
            return
        self._updates_since_line, self._last_line_time = 0, now
        # The rate is measured from the first update, not from the start, so compile time does not
        # inflate the ETA.
        first_step, first_time = self._first
        if step > first_step and now > first_time:
            rate = (step - first_step) / (now - first_time)
            eta = tqdm.format_interval(max(0, self.total - step) / rate)
        else:
            eta = "?"
        elapsed = tqdm.format_interval(now - self._start_time)
        parts = [f"{self.desc} step {step}/{self.total}", _summary(metrics)]
        parts += [f"elapsed={elapsed}", f"eta={eta}"]
        print(" ".join(p for p in parts if p), flush=True)

    def write(self, msg: str) -> None:
        """Prints `msg` on its own line without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        """Closes the bar; further calls are no-ops."""
        if self._bar is not None:
            self._bar.close()
        self.enabled, self._bar = False, None
