"""Run the fits with single-threaded OpenBLAS.

scipy's L-BFGS-B calls LAPACK on its 5x5 problem every iteration. With OpenBLAS's default thread
pool each call costs ~0.5 ms on a 2-core machine that is also training (threads hand off and wait
for the busy cores), which made a 200-resample bootstrap 10x slower (65 s instead of 6.5 s) than
with one thread. numpy and scipy each load their own OpenBLAS, so both are set, through the same C
entry points that `threadpoolctl` uses, found in the process's loaded libraries (Linux
`/proc/self/maps`; elsewhere this is a no-op).
"""

import contextlib
import ctypes
import functools
from collections.abc import Iterator

_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)


def _openblas_paths() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split() for line in f]
    except OSError:
        return []
    return sorted({p[-1] for p in fields if p[-1].startswith("/") and "openblas" in p[-1].lower()})


@functools.cache
def _controls() -> list[tuple]:
    """(setter, getter) pairs, one per loaded OpenBLAS (found once: fits load numpy and scipy)."""
    found = []
    for path in _openblas_paths():
        lib = ctypes.CDLL(path)
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            getter = getattr(lib, name.replace("_set_", "_get_"), None)
            if setter is not None and getter is not None:
                found.append((setter, getter))
                break
    return found


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Limits every loaded OpenBLAS to one thread inside the block, then restores the counts."""
    controls = _controls()
    before = [getter() for _, getter in controls]
    for setter, _ in controls:
        setter(1)
    try:
        yield
    finally:
        for (setter, _), n in zip(controls, before, strict=True):
            setter(n)
