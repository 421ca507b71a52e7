"""z-tests for 'unbiased estimator' claims, with bounds derived from the number of values tested."""

from __future__ import annotations

import torch


def assert_mean_is(samples: torch.Tensor, expected: torch.Tensor) -> None:
    """Each value's sample mean over ``samples``' first dimension equals ``expected`` within its
    standard error: no |z| above 6, and mean z^2 (chi-square / n) within 5 of its standard deviations
    sqrt(2 / n) of 1, so a wrong variance (repeated or correlated draws) fails too. Values that never
    vary (exactly zero terms) are left out. Values that share a draw (one gradient's entries) are
    correlated, which widens mean z^2's spread beyond sqrt(2 / n) but not its expectation; the callers'
    fixed seeds keep the outcome from flaking either way."""
    mean, std = samples.mean(0), samples.std(0)
    live = std > 0
    z = (mean - expected)[live] / (std[live] / len(samples) ** 0.5)
    tolerance = 5 * (2 / z.numel()) ** 0.5
    assert z.abs().max() < 6, f"largest |z| {z.abs().max():.2f}"
    assert abs(z.square().mean() - 1) < tolerance, (
        f"mean z^2 {z.square().mean():.3f}, allowed 1 +- {tolerance:.3f}"
    )
