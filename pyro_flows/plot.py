"""PNG plots of a training run (matplotlib's object API with the Agg canvas: no display,
no global pyplot state, safe in scripts and worker processes).

* :func:`plot_nll_curves`: training and validation NLL against the step;
* :func:`plot_2d`: for 2-D data, the data | the model's samples | its density on a grid;
* :func:`plot_1d`: for 1-D data, the histogram with the learned density;
* :func:`plot_image_grid`: a grid of images (samples of an image flow).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_nll_curves", "plot_2d", "plot_1d", "plot_image_grid"]


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_nll_curves(
    records: Sequence[dict], path: str, title: str = "", unit: str = "nats per point", scale: float = 1.0
) -> str:
    """Training (running) and validation NLL per step from the ``metrics.jsonl`` records,
    multiplied by ``scale`` and labelled with ``unit`` (image runs: ``1 / (D ln 2)`` and
    ``"bits/dim"``)."""
    return _save(_nll_figure(records, title, unit, scale), path)


def _nll_figure(records: Sequence[dict], title: str, unit: str, scale: float) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    # (flow-matching runs log their loss instead of a training NLL)
    train = [r for r in records if r.get("split") == "train" and "nll" in r]
    val = [r for r in records if r.get("split") == "val"]
    if train:
        ax.plot(
            [r["step"] for r in train],
            [scale * r.get("running_nll", r["nll"]) for r in train],
            label="train (running)",
        )
    if val:
        ax.plot([r["step"] for r in val], [scale * r["nll"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(f"NLL ({unit})")
    ax.set_title(title or "negative log-likelihood")
    if train or val:  # an empty legend warns
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_2d(
    data: torch.Tensor,
    samples: torch.Tensor,
    log_density: Callable[[torch.Tensor], torch.Tensor],
    path: str,
    title: str = "",
    resolution: int = 150,
) -> str:
    """Three panels on the same axes: data points, model samples, and the model's
    density :math:`p(x)` evaluated on a ``resolution``-squared grid (with a colour bar);
    ``title`` goes above the panels' own titles. ``log_density`` receives the grid as a
    tensor of shape ``(resolution**2, 2)`` in the dtype of ``data`` (when a floating-point
    tensor; else the default dtype), so a flow's ``log_prob`` can be passed as it is.
    Samples holding a NaN or infinite value cannot be drawn: the samples panel's title
    says how many were left out."""
    return _save(_figure_2d(data, samples, log_density, title, resolution), path)


def _figure_2d(data, samples, log_density, title: str, resolution: int) -> Figure:
    dtype = _grid_dtype(data)
    data, samples = _numpy(data), _numpy(samples)
    lo = np.percentile(data, 0.5, axis=0)
    hi = np.percentile(data, 99.5, axis=0)
    pad = np.maximum(0.15 * (hi - lo), 1e-3 * np.maximum(1.0, np.abs(hi)))  # a constant coordinate too
    lo, hi = lo - pad, hi + pad
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=dtype)
    with torch.no_grad():
        density = torch.exp(log_density(grid)).reshape(resolution, resolution).double().numpy()
    # Constrained layout keeps the overall title clear of the panel titles and makes
    # room for the colour bar.
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.4)
    axes[0].set_title("data")
    samples, left_out = _finite_rows(samples)
    axes[1].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="tab:orange")
    axes[1].set_title("model samples" + _left_out_note(left_out, len(samples) + left_out))
    image = axes[2].imshow(
        density, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", cmap="viridis"
    )
    axes[2].set_title("model density")
    fig.colorbar(image, ax=axes[2], label="p(x)")
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    if title:
        fig.suptitle(title)
    return fig


def plot_1d(
    data: torch.Tensor,
    log_density: Callable[[torch.Tensor], torch.Tensor],
    path: str,
    title: str = "",
    samples: Optional[torch.Tensor] = None,
) -> str:
    """Histogram of 1-D data (density-normalised) with the model's density on top;
    ``log_density`` receives 400 points as a tensor of shape ``(400, 1)`` in the dtype of
    ``data`` (as :func:`plot_2d`'s grid). Samples holding a NaN or infinite value are
    left out of their histogram, and its legend says how many."""
    dtype = _grid_dtype(data)
    data = _numpy(data).reshape(-1)
    lo, hi = np.percentile(data, 0.1), np.percentile(data, 99.9)
    pad = max(0.1 * (hi - lo), 1e-3 * max(1.0, abs(hi)))  # constant data too
    xs = np.linspace(lo - pad, hi + pad, 400)
    with torch.no_grad():
        density = torch.exp(log_density(torch.tensor(xs, dtype=dtype).unsqueeze(-1))).double().numpy()
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.hist(data, bins=80, density=True, alpha=0.45, label="data")
    if samples is not None:
        finite, left_out = _finite_rows(_numpy(samples).reshape(len(samples), -1))
        label = "model samples" + _left_out_note(left_out, len(finite) + left_out)
        if len(finite):  # (a histogram of infinite values has no range to bin)
            ax.hist(finite.reshape(-1), bins=80, density=True, histtype="step", label=label)
        else:
            ax.plot([], [], label=label)
    ax.plot(xs, density, color="black", label="model density")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(title or "data and learned density")
    return _save(fig, path)


def plot_image_grid(images: torch.Tensor, path: str, title: str = "", nrow: Optional[int] = None) -> str:
    """Images ``(N, C, H, W)`` with values in [0, 1] tiled into one picture
    (grey for C = 1, RGB for C = 3)."""
    images = _numpy(images).clip(0.0, 1.0)
    if images.ndim != 4:
        raise ValueError(f"plot_image_grid: expected images of shape (N, C, H, W), got shape {images.shape}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError(f"plot_image_grid: expected at least one image, got shape {images.shape}")
    if c not in (1, 3):
        raise ValueError(f"plot_image_grid: expected 1 (grey) or 3 (RGB) channels, got {c}")
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    canvas = np.ones((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c))
    for k in range(n):
        r, q = divmod(k, nrow)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = images[
            k
        ].transpose(1, 2, 0)
    fig = Figure(figsize=(max(3, nrow * 0.6), max(3, ncol * 0.6)))
    ax = fig.add_subplot()
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _finite_rows(x) -> tuple:
    """The rows of ``x`` (an array of points) whose values are all finite, and how many
    were dropped."""
    x = _numpy(x)
    keep = np.isfinite(x.reshape(len(x), -1)).all(1)
    return x[keep], int((~keep).sum())


def _left_out_note(left_out: int, total: int) -> str:
    """`` (3 of 100 not finite, not shown)``, or nothing when none was left out."""
    return f" ({left_out} of {total} not finite, not shown)" if left_out else ""


def _grid_dtype(data) -> torch.dtype:
    """The dtype of the points given to ``log_density``: the data's, which a model fitted
    to them accepts."""
    if isinstance(data, torch.Tensor) and data.is_floating_point():
        return data.dtype
    return torch.get_default_dtype()


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
