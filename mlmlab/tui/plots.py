"""Live metric plots: a `PlotextPlot` that holds its lines and replots on new data, axis or smoothing.

Points arrive already downsampled (see `reader.SeriesBook`), so a plot never builds more than a few
hundred points per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from textual_plotext import PlotextPlot

from mlmlab.tui.formatting import X_LABELS, smooth, x_value

Points = list[tuple[float, float]]


@dataclass
class Line:
    label: str
    color: str
    points: Points = field(default_factory=list)
    right: bool = False  # drawn against a y axis of its own on the right (another unit on one panel)


class MetricPlot(PlotextPlot):
    """One metric (or a few) against step, tokens or time, with optional smoothing and a legend."""

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.lines: list[Line] = []
        self.x_axis = "step"
        self.smoothing = 0.0

    def show(self, lines: Sequence[Line], x_axis: str, smoothing: float) -> None:
        self.lines, self.x_axis, self.smoothing = list(lines), x_axis, smoothing
        self.replot()

    @property
    def n_points(self) -> int:
        return sum(len(line.points) for line in self.lines)

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        has_data = any(line.points for line in self.lines)
        plt.title(self.title if has_data else f"{self.title} (no data yet)")
        plt.xlabel(X_LABELS[self.x_axis])
        for line in self.lines:
            if not line.points:
                continue
            xs = [x_value(self.x_axis, x) for x, _ in line.points]
            ys = smooth([y for _, y in line.points], self.smoothing)
            plt.plot(xs, ys, label=line.label or None, color=line.color, marker="braille",
                     yside="right" if line.right else None)
        self.refresh()
