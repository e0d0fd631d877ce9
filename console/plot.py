"""Terminal plotting in pure Python: a braille dot canvas for curves, block sparklines and bars.

Each braille character holds a 2×4 grid of dots, so a W×H cell area plots at 2W×4H resolution. A cell remembers
which series drew in it last, so the widget can colour it; later series win where they overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Point = tuple[float, float]

_BRAILLE_BASE = 0x2800
# _DOTS[row][column] is the bit of that dot inside one braille cell.
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_SPARKS = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉█"


class BrailleCanvas:
    def __init__(self, width: int, height: int) -> None:
        self.width = max(1, width)
        self.height = max(1, height)
        self._bits = [[0] * self.width for _ in range(self.height)]
        self._owner = [[-1] * self.width for _ in range(self.height)]

    @property
    def dot_width(self) -> int:
        return self.width * 2

    @property
    def dot_height(self) -> int:
        return self.height * 4

    def dot(self, x: int, y: int, series: int) -> None:
        """Set the dot at (x, y) in dot coordinates, y = 0 at the top; dots off the canvas are ignored."""
        if 0 <= x < self.dot_width and 0 <= y < self.dot_height:
            row, col = y // 4, x // 2
            self._bits[row][col] |= _DOTS[y % 4][x % 2]
            self._owner[row][col] = series

    def line(self, x0: int, y0: int, x1: int, y1: int, series: int) -> None:
        """Bresenham line between two dots, so sparse samples still draw a continuous curve."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, series)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def rows(self) -> list[list[tuple[str, int]]]:
        """Each row as (character, owning series or -1) cells."""
        return [
            [(chr(_BRAILLE_BASE + bits) if bits else " ", owner) for bits, owner in zip(bit_row, owner_row, strict=True)]
            for bit_row, owner_row in zip(self._bits, self._owner, strict=True)
        ]


class Scale:
    """Maps data coordinates onto a canvas's dot grid (y grows upwards in data, downwards on screen)."""

    def __init__(self, canvas: BrailleCanvas, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.canvas = canvas
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            pad = abs(self.y0) * 0.01 or 1.0
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad

    def to_dots(self, x: float, y: float) -> tuple[int, int]:
        fx = (x - self.x0) / (self.x1 - self.x0)
        fy = (y - self.y0) / (self.y1 - self.y0)
        fy = min(1.0, max(0.0, fy))  # values outside the y range are pinned to the edge, not dropped
        dx = round(fx * (self.canvas.dot_width - 1))
        dy = round((1.0 - fy) * (self.canvas.dot_height - 1))
        return dx, dy

    def polyline(self, points: Sequence[Point], series: int) -> None:
        previous: tuple[int, int] | None = None
        for x, y in points:
            current = self.to_dots(x, y)
            if previous is None:
                self.canvas.dot(*current, series)
            else:
                self.canvas.line(*previous, *current, series)
            previous = current

    def step(self, points: Sequence[Point], series: int) -> None:
        """A staircase through the points: horizontal to the next x, then vertical (a running best)."""
        stairs: list[Point] = []
        for i, (x, y) in enumerate(points):
            if i:
                stairs.append((x, points[i - 1][1]))
            stairs.append((x, y))
        self.polyline(stairs, series)

    def marker(self, x: float, y: float, series: int, size: int = 1) -> None:
        cx, cy = self.to_dots(x, y)
        for ox in range(size):
            for oy in range(size):
                self.canvas.dot(cx + ox - size // 2, cy + oy - size // 2, series)


def data_range(values: Iterable[float]) -> tuple[float, float] | None:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return (min(finite), max(finite)) if finite else None


def sparkline(values: Sequence[float], width: int, low: float | None = None, high: float | None = None) -> str:
    """The last `width` values as block characters; `low`/`high` fix the scale (default: the data's range)."""
    if width <= 0:
        return ""
    tail = [v for v in values if v is not None][-width:]
    if not tail:
        return " " * width
    lo = min(tail) if low is None else low
    hi = max(tail) if high is None else high
    span = hi - lo
    chars = []
    for v in tail:
        level = 0 if span <= 0 else int(round((min(max(v, lo), hi) - lo) / span * (len(_SPARKS) - 1)))
        chars.append(_SPARKS[level])
    return " " * (width - len(chars)) + "".join(chars)


def bar(fraction: float | None, width: int) -> tuple[str, int]:
    """A horizontal bar in eighth-blocks: (filled part, number of empty cells after it)."""
    if width <= 0:
        return "", 0
    if fraction is None or fraction != fraction:
        return "", width
    eighths = int(round(min(1.0, max(0.0, fraction)) * width * 8))
    full, rest = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[rest] if rest else "")
    return text, width - len(text)


def nice_label(value: float, span: float) -> str:
    """Axis label with just enough decimals for the span it labels."""
    if span >= 100:
        return f"{value:.0f}"
    if span >= 10:
        return f"{value:.1f}"
    if span >= 1:
        return f"{value:.2f}"
    if span >= 0.1:
        return f"{value:.3f}"
    return f"{value:.4f}"
