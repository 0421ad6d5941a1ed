"""A device by name: a datasheet roofline (rx580, a100, ...), this host's roofline calibrated by
three micro-benchmarks (`host-roofline`, runtime/roofline.py), or this host learned kernel by kernel
(`host`, runtime/kernel_model.py). What every latency prediction starts from."""

from __future__ import annotations

import platform

from tensorfold.errors import TensorfoldError
from tensorfold.runtime.kernel_model import VERSION, learn_host
from tensorfold.runtime.roofline import (
    DEVICES,
    Device,
    NodeCost,
    calibrate_host,
    describe,
    fit_roofline,
    host_key,
    node_costs,
    predict_seconds,
)

__all__ = [
    "DEVICES",
    "Device",
    "NodeCost",
    "calibrate_host",
    "describe",
    "fit_roofline",
    "get_device",
    "learned_host",
    "node_costs",
    "predict_seconds",
]


def get_device(name: str, provider: str = "cpu", threads: int = 0, progress: bool = True) -> Device:
    """A device profile by name. `host` is this machine through `provider`, learned from sampled
    kernels (about two minutes the first time, then cached); `host-roofline` is the quicker roofline
    calibrated by three micro-benchmarks, which ranks layers less well (docs/results/device-model-quality.md)."""
    if name == "host":
        return learned_host(provider, threads, progress)
    if name == "host-roofline":
        return calibrate_host(provider, threads)
    if name not in DEVICES:
        raise TensorfoldError(f"unknown device '{name}' (profiles: host, host-roofline, {', '.join(sorted(DEVICES))})")
    return DEVICES[name]


def learned_host(provider: str = "cpu", threads: int = 0, progress: bool = True) -> Device:
    roofline = calibrate_host(provider, threads)
    kernels = learn_host(provider, threads, fallback=roofline, progress=progress)
    return Device(
        "host",
        roofline.peak_flops,
        roofline.bandwidth,
        roofline.overhead_s,
        None,
        f"learned from {len(kernels.samples)} sampled kernels through {provider} on {platform.node()}",
        kernels.call_s,
        kernels=kernels,
        key=f"host-k{VERSION}-{host_key(provider, threads)}",
    )
