"""The house style of every figure, the one figure saver, colours, and reading a figure back.

    python -c "from sdpo_kit.plots import save_figure; save_figure(lambda a: a[0].plot([1, 2]), 'f.png')"

`save_figure` is the one place a figure is made and written: one style, a deterministic PNG (no
Software/date stamp: the same data gives the same bytes), written atomically. `axes_series(ax)`
reads back what an Axes shows (lines, bars, points), which is how the report's `figures.json`
and the tests check the plotted series rather than the pixels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import matplotlib.style
import numpy as np
from matplotlib.figure import Figure

from sdpo_kit.io import atomic_path
from sdpo_kit.stats import spearman

# One colour per training step (step 1 = first colour), the same in every figure.
STEP_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
STYLE = {
    "figure.dpi": 110,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


# Sizes of the two kinds of figure: a report figure is 6.2 x 4.2 in per panel, cropped to its content;
# a card plot is one 7 x 4 in panel at 100 dpi (700 x 400 px, as the Hugging Face hub shows it).
REPORT = {"panel": (6.2, 4.2), "dpi": 110, "crop": True}
CARD = {"panel": (7, 4), "dpi": 100, "crop": False}


def save_figure(draw: Callable[[list], Any], path: str | Path | None = None, ncols: int = 1,
                panel: tuple[float, float] = REPORT["panel"], dpi: int = REPORT["dpi"], crop: bool = REPORT["crop"]) -> dict:
    """Make a 1 x ncols figure in the house style, let `draw(axes)` fill it, write it as a PNG.

    Returns {"png": the PNG bytes, "series": `axes_series` of every panel}; with `path` the PNG is
    also written there atomically. Pass `**CARD` for a card plot, nothing for a report figure.
    """
    with matplotlib.style.context(STYLE):  # a Figure, not pyplot: no backend, no global figure to close
        fig = Figure(figsize=(panel[0] * ncols, panel[1]), dpi=dpi)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        draw(list(axes))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if crop else None, metadata={"Software": None})
    series = [axes_series(a) for a in axes]
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
    return {"png": buf.getvalue(), "series": series}


def step_color(step: int) -> str:
    return STEP_COLORS[(step - 1) % len(STEP_COLORS)]


def model_color(name: str) -> str:
    """Grey for S; M_t gets the colour of step t, whichever models an eval kept."""
    return "0.55" if name == "S" else step_color(int(name.lstrip("M")))


def rank_rho(x, y) -> float:
    """stats.spearman for a label: NaN when undefined (fewer than 3 finite points, a constant side)."""
    rho = spearman(x, y)
    return float("nan") if rho is None else rho


def axes_series(ax) -> dict[str, Any]:
    """What an Axes shows, as plain numbers: lines, bars (+ error half-widths), histograms, points."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    lines = [
        {"label": ln.get_label(), "x": [float(v) for v in ln.get_xdata()], "y": [float(v) for v in ln.get_ydata()]}
        for ln in ax.get_lines() if not ln.get_label().startswith("_")
    ]
    bars = []
    for c in ax.containers:
        if isinstance(c, BarContainer):
            horizontal = c.orientation == "horizontal"
            values = [float(p.get_width() if horizontal else p.get_height()) for p in c.patches]
            bars.append({"label": c.get_label(), "values": values})
    errors = [[float(abs(seg[1][1] - seg[0][1]) / 2) for seg in c.lines[2][0].get_segments()]
              for c in ax.containers if isinstance(c, ErrorbarContainer) and c.lines[2]]
    ticks = [t.get_text() for t in (ax.get_yticklabels() if any(
        getattr(c, "orientation", "") == "horizontal" for c in ax.containers) else ax.get_xticklabels())]
    hists = [{"label": p.get_label(), "counts": [float(v) for v in p.get_data().values],
              "edges": [float(v) for v in p.get_data().edges]}
             for p in ax.patches if type(p).__name__ == "StepPatch" and not p.get_label().startswith("_")]
    points = [{"label": c.get_label(), "xy": np.asarray(c.get_offsets(), float).tolist()}
              for c in ax.collections if type(c).__name__ == "PathCollection" and not c.get_label().startswith("_")]
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "ticks": ticks,
            "lines": lines, "bars": bars, "errors": errors, "hists": hists, "points": points}
