"""Outputs against the bundle's reference: what galaxy-run and fault trials report per request."""
from __future__ import annotations

from typing import Mapping

import torch


def output_errors(outputs: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  tolerance: tuple[float, float]) -> tuple[dict[str, float], bool]:
    """Each expected output's max absolute error (inf when missing or of another shape) and whether
    all are within torch.allclose(atol, rtol) of `tolerance`."""
    atol, rtol = tolerance
    errors, within = {}, True
    for name, value in sorted(expected.items()):
        actual = outputs.get(name)
        if actual is None or actual.shape != value.shape:
            errors[name], within = float("inf"), False
            continue
        errors[name] = (actual.double() - value.double()).abs().max().item() if actual.numel() else 0.0
        within = within and torch.allclose(actual.double(), value.double(), atol=atol, rtol=rtol)
    return errors, within
