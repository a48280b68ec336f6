"""Throughput accounting: peak FLOP/s (given or measured) and model FLOPs utilisation."""

import functools
import time

import jax
import jax.numpy as jnp


@functools.cache
def measure_peak_flops(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
    """Measured FLOP/s of one device on an n x n matmul, best of `repeats` (the MFU denominator).

    Measured once per process (a sweep runs many points in one process).

    On an accelerator, prefer the vendor peak (`train.peak_flops`): a single matmul of this size
    does not saturate a TPU/GPU.
    """
    device = jax.devices()[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def mfu(
    tokens_per_s: float, flops_per_token: float, peak_flops_per_device: float, n_devices: int
) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
    return tokens_per_s * flops_per_token / (peak_flops_per_device * n_devices)
