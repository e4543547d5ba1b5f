"""The learning curve of a project as a PNG: accuracy and loss per round, one line per cluster.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, so threads can draw at
once). The PNG carries the number of points of every drawn line in its ``Points`` text chunk
(JSON), so a reader can check what was drawn without decoding pixels.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from manager.records import RoundRecord

PLOT_FILE = "learning_curve.png"
METRICS = ("accuracy", "loss")
GLOBAL = "global"


def series(rounds: Sequence[RoundRecord]) -> dict[str, list[RoundRecord]]:
    """Rounds per line: ``global`` (classic rounds, or the root's model after each cycle) and each cluster."""
    lines: dict[str, list[RoundRecord]] = {}
    for record in sorted(rounds, key=lambda r: r.step):
        lines.setdefault(record.cluster or GLOBAL, []).append(record)
    return dict(sorted(lines.items(), key=lambda item: (item[0] == GLOBAL, item[0])))


def render_png(rounds: Sequence[RoundRecord], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(METRICS))
    points: dict[str, int] = {}
    lines = series(rounds)
    for ax, metric in zip(axes, METRICS, strict=True):
        for label, records in lines.items():
            steps = [r.step for r in records if metric in r.metrics]
            values = [r.metrics[metric] for r in records if metric in r.metrics]
            if not steps:
                continue
            style = {"linewidth": 2.5, "marker": "o", "color": "black"} if label == GLOBAL else {"marker": "."}
            (line,) = ax.plot(steps, values, label=label, **style)
            points[f"{metric}/{label}"] = len(line.get_xdata())
        ax.set_title(metric)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Points": json.dumps(points, sort_keys=True)})
    return buffer.getvalue()
