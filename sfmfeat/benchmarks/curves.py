"""MMA curves drawn with OpenCV: three panels (overall, illumination, viewpoint), one line
per method, as in the D2-Net figure. No plotting library is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from ..errors import InputError

PANELS = (("overall", "Overall"), ("i", "Illumination"), ("v", "Viewpoint"))
# BGR, colour-blind-friendly (Okabe-Ito) then a few extra
COLORS = ((178, 114, 0), (0, 94, 213), (115, 158, 0), (167, 121, 204), (233, 180, 86),
          (66, 228, 240), (0, 0, 0), (0, 159, 230), (128, 128, 128), (60, 20, 220))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_mma_curves(curves: Mapping[str, Mapping[str, Sequence[float]]],
                    thresholds: Sequence[int], path: str | Path,
                    panel_size: tuple[int, int] = (420, 360)) -> Path:
    """Write a PNG of MMA vs threshold. ``curves[name][panel]`` holds one value per threshold
    for panel "overall", "i" and "v"."""
    if not curves:
        raise InputError("no MMA curve to plot")
    thresholds = list(thresholds)
    pw, ph = panel_size
    margin_l, margin_r, margin_t, margin_b = 60, 15, 35, 45
    legend_h = 22 * ((len(curves) + 2) // 3) + 10
    canvas = np.full((ph + legend_h, pw * len(PANELS), 3), 255, np.uint8)
    x_lo, x_hi = thresholds[0], thresholds[-1]

    for p, (key, title) in enumerate(PANELS):
        ox = p * pw
        left, right = ox + margin_l, ox + pw - margin_r
        top, bottom = margin_t, ph - margin_b

        def to_px(x: float, y: float) -> tuple[int, int]:
            u = left + (x - x_lo) / max(x_hi - x_lo, 1e-9) * (right - left)
            v = bottom - float(np.clip(y, 0, 1)) * (bottom - top)
            return int(round(u)), int(round(v))

        for y in np.linspace(0, 1, 6):
            a, b = to_px(x_lo, y), to_px(x_hi, y)
            cv2.line(canvas, a, b, (225, 225, 225), 1, cv2.LINE_AA)
            cv2.putText(canvas, f"{y:.1f}", (ox + 22, a[1] + 5), FONT, 0.4, (60, 60, 60), 1,
                        cv2.LINE_AA)
        for x in thresholds:
            a, b = to_px(x, 0), to_px(x, 1)
            cv2.line(canvas, a, b, (225, 225, 225), 1, cv2.LINE_AA)
            cv2.putText(canvas, str(x), (a[0] - 4 * len(str(x)), bottom + 16), FONT, 0.4,
                        (60, 60, 60), 1, cv2.LINE_AA)
        cv2.rectangle(canvas, (left, top), (right, bottom), (0, 0, 0), 1)
        cv2.putText(canvas, title, (left + (right - left) // 2 - 6 * len(title), top - 12), FONT,
                    0.6, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, "threshold [px]", (left + (right - left) // 2 - 50, bottom + 36), FONT,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
        if p == 0:
            cv2.putText(canvas, "MMA", (ox + 4, top - 12), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for c, values in enumerate(curves.values()):
            ys = list(values[key])[:len(thresholds)]
            pts = np.array([to_px(x, y) for x, y in zip(thresholds, ys)], np.int32)
            color = COLORS[c % len(COLORS)]
            cv2.polylines(canvas, [pts], False, color, 2, cv2.LINE_AA)
            for pt in pts:
                cv2.circle(canvas, tuple(int(v) for v in pt), 3, color, -1, cv2.LINE_AA)

    for c, name in enumerate(curves):
        col, row = c % 3, c // 3
        x, y = 20 + col * pw, ph + 16 + 22 * row
        color = COLORS[c % len(COLORS)]
        cv2.line(canvas, (x, y - 4), (x + 30, y - 4), color, 3, cv2.LINE_AA)
        cv2.putText(canvas, name[:48], (x + 38, y), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", canvas)
    if not ok:
        raise InputError(f"cannot encode the plot for {path}")
    path.write_bytes(data.tobytes())
    return path
