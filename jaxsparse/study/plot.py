"""The study's Pareto plot: accuracy against images/s, dense marked, deltas labelled, the
Pareto frontier (``report`` rows' ``pareto``) drawn as a line through its points."""

from __future__ import annotations

import io
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402


def _place_labels(fig, ax, points: list[tuple[float, float, str]]) -> None:
    """Annotates each point, moving a label to the first nearby spot where it overlaps no
    label placed before it (points at similar speed and accuracy otherwise collide)."""
    fig.canvas.draw()
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(6, 4), (6, -12), (6, 16), (6, -24), (6, 28), (6, -36), (6, 40)]
    for x, y, text in sorted(points, key=lambda p: -p[1]):
        px, py = ax.transData.transform((x, y))
        width, height = 5.0 * len(text), 11.0
        for dx, dy in offsets:
            box = (px + dx, py + dy, px + dx + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                    arrowprops=None if (dx, dy) == offsets[0] else
                    dict(arrowstyle="-", color="gray", lw=0.5))


def pareto_plot(report: dict[str, Any], path: str) -> np.ndarray:
    """Draws the plot to ``path`` (PNG) and returns it as an (H, W, 3) uint8 array.

    Only rows that may claim a speed (measured compiled accuracy, real speedup) are placed by
    their speed; mask-only rows are drawn at the dense speed with a hollow marker and labelled.
    """
    rows = report["rows"]
    dense = rows[0]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = []
    for r in rows:
        if r["accuracy"] is None:
            continue
        is_dense = r["variant"] == "dense"
        x = r["images_per_sec"] if r["images_per_sec"] is not None else \
            dense["measured_images_per_sec"]
        hollow = r["images_per_sec"] is None and not is_dense
        ax.scatter([x], [100 * r["accuracy"]], s=90 if is_dense else 50,
                   marker="*" if is_dense else "o", color="black" if is_dense else None,
                   facecolors="none" if hollow else None, edgecolors="gray" if hollow else None,
                   zorder=3)
        delta = "" if is_dense else f" ({100 * r['accuracy_delta']:+.2f} pt)"
        label = "dense" if is_dense else r["variant"] + (" [mask only]" if hollow else "")
        points.append((x, 100 * r["accuracy"], label + delta))
    front = sorted((r["images_per_sec"], 100 * r["accuracy"]) for r in rows if r.get("pareto"))
    if front:
        fx, fy = zip(*front, strict=True)
        ax.plot(fx, fy, color="tab:red", lw=1.0, ls="--", zorder=2)
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="tab:red", lw=1.2, zorder=4)
    ax.margins(x=0.25, y=0.2)
    _place_labels(fig, ax, points)
    ax.legend(handles=[
        Line2D([], [], marker="*", color="black", linestyle="", markersize=10,
               label="dense (unchanged model)"),
        Line2D([], [], marker="o", color="tab:blue", linestyle="",
               label="sparse, at its measured speed"),
        Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="gray",
               linestyle="", label="mask only (no speedup; drawn at dense speed)"),
        Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="tab:red",
               color="tab:red", linestyle="--", markersize=10,
               label="Pareto frontier (accuracy vs measured images/s)")],
        fontsize=7, loc="best", framealpha=0.8)
    ax.set_xlabel(f"images/s ({report['device_kind']}, {report['precision']}, batch "
                  f"{report['batch_size']})")
    ax.set_ylabel("test accuracy (%)")
    title = f"{report.get('title', 'sparsity study')}: accuracy vs throughput"
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return (plt.imread(buf)[..., :3] * 255).astype(np.uint8)
