"""Device rates for the emulated clusters, measured on this machine at the start of a run.

The clusters' files state GFLOP/s from an older calibration (cpu_share x 80 GFLOP/s), but this
machine's one-thread GEMM rate moves with its host (130-140 GFLOP/s in December 2026,
docs/PERFORMANCE.md). A run measures the model's layer GEMMs, its SDPA and the GEMM speed by rows
with galaxy-profile's own code on one thread, and gives each emulated device cpu_share times those
rates (a decode step's GEMV rate too, and its dispatch cost per op divided by the share). One
factor per CPU mode then scales every device so that the fastest device alone is
predicted as a calibration run of it on the emulator measured (`scaled`): the emulator's
throttling, the rank's process and its elementwise work cost what they cost on a device, which a
profile taken on the device itself would include. Predictions of every other plan are then
compared with what the same run measures. Transfers hide behind about half
of a throttled device's GEMM under a CPU quota and about 0.7 of it with a CPU of its own by weight
(docs/PERFORMANCE.md, section 2): each device's overlap efficiency follows the CPU mode.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.profile.device import QUICK, DeviceRates, measure_device, shapes_from_summary

log = logging.getLogger("benchmarks")

OVERLAP_EFFICIENCY = {"quota": 0.5, "weight": 0.7}


def measure_host(summary: ModelSummary) -> DeviceRates:
    """This machine's rates on one thread at `summary`'s layer shapes."""
    threads = torch.get_num_threads()
    try:
        rates = measure_device(shapes_from_summary(summary), QUICK, threads=1)
    finally:
        torch.set_num_threads(threads)
    log.info("host, one thread, %s: GEMM %.1f GFLOP/s, SDPA %.1f GFLOP/s, rows speed %s", summary.name,
             rates.flops_per_s / 1e9, rates.attention_flops_per_s / 1e9, rates.rows_speed)
    return rates


def calibrated(cluster: Cluster, host: DeviceRates, cpu_mode: str) -> Cluster:
    """`cluster` with each device at its CPU share of the host's rates, overlap per CPU mode."""
    efficiency = OVERLAP_EFFICIENCY.get(cpu_mode)
    devices = tuple(replace(d, flops_per_s=d.cpu_share * host.flops_per_s,
                            attention_flops_per_s=d.cpu_share * host.attention_flops_per_s,
                            gemm_rows_speed=host.rows_speed,
                            overlap_efficiency=d.overlap_efficiency if efficiency is None else efficiency,
                            gemv_bytes_per_s=d.cpu_share * (host.gemv_bytes_per_s or 0.0) or d.gemv_bytes_per_s,
                            dispatch_s_per_op=(host.dispatch_s_per_op or 0.0) / d.cpu_share or d.dispatch_s_per_op)
                    for d in cluster.devices)
    return replace(cluster, devices=devices)


def scaled(cluster: Cluster, factor: float) -> Cluster:
    """`cluster` with every device's compute rates times `factor`."""
    devices = tuple(replace(d, flops_per_s=d.flops_per_s * factor,
                            attention_flops_per_s=d.attention_flops_per_s * factor) for d in cluster.devices)
    return replace(cluster, devices=devices)
