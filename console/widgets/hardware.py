"""Hardware: per-GPU utilisation, memory, power and temperature as bars with a short history, plus CPU and RAM."""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.widget import Widget

from loopdeck.console import format as fmt
from loopdeck.console.plot import bar, sparkline
from loopdeck.console.state import SessionView
from loopdeck.console.views import Telemetry

LABEL = 5
VALUE = 10


def meter(label: str, fraction: float | None, value: str, history: Sequence[float], width: int,
          style: str = "$primary", high: float = 100.0) -> Content:
    """`label ▕████▌    ▏ value ▂▃▅▇` fitted to `width`; the sparkline goes first when space runs out."""
    room = width - LABEL - VALUE - 4  # bar edges and two spaces
    bar_width = max(4, min(room, max(6, room // 2)))
    spark_width = min(30, max(0, room - bar_width - 1))
    filled, empty = bar(fraction, bar_width)
    if fraction is not None and fraction >= 0.9 and style == "$primary":
        style = "$warning"
    parts: list[tuple[str, str] | str] = [
        (label.ljust(LABEL), "$text-muted"), ("▕", "$text-muted 40%"), (filled, style),
        (" " * empty, "on $boost"), ("▏", "$text-muted 40%"), " ", value.rjust(VALUE)[:VALUE],
    ]
    if spark_width:
        parts += [" ", (sparkline(list(history), spark_width, 0.0, high), f"{style} 70%")]
    return Content.assemble(*parts)


def hardware_lines(view: SessionView, width: int) -> list[Content]:
    """This machine's GPUs, CPU and RAM; then one group per other node whose workers report their own."""
    telemetry = view.telemetry
    if telemetry.latest is None and not telemetry.nodes:
        return [Content.styled("waiting for the first sample…", "$text-muted")]
    lines: list[Content] = []
    if telemetry.nodes:
        lines.append(Content.styled("this machine", "bold $text-muted"))
    lines += node_lines(telemetry, width) if telemetry.latest is not None else []
    for node, remote in sorted(telemetry.nodes.items()):
        lines += [Content(""), Content.assemble(("node ", "bold $text-muted"), (node, "bold"),
                                                 (" (its workers' telemetry)", "$text-muted"))]
        lines += node_lines(remote, width)
    return lines


def node_lines(history: Telemetry, width: int) -> list[Content]:
    """One machine's meters, from its latest sample and histories."""
    sample = history.latest
    assert sample is not None
    lines: list[Content] = []
    for gpu in sample.gpus:
        h = history.gpu.get(gpu.index, {})
        lines.append(Content.assemble((f"GPU {gpu.index} ", "bold"), (gpu.name, "$text-muted")))
        util = gpu.utilization_percent
        lines.append(meter("util", None if util is None else util / 100, "n/a" if util is None else f"{util:.0f}%",
                           h.get("util", ()), width))
        used, total = gpu.memory_used_mb, gpu.memory_total_mb
        mem_value = "n/a" if used is None else (f"{used / 1024:.1f}/{total / 1024:.0f} GB" if total else
                                                fmt.megabytes(used))
        lines.append(meter("mem", used / total if used is not None and total else None, mem_value,
                           h.get("mem", ()), width, "$secondary"))
        power = gpu.power_watts
        peak_power = max(h.get("power", ()) or [power or 0.0]) or 1.0
        lines.append(meter("power", None if power is None else power / max(peak_power, 1.0),
                           "n/a" if power is None else f"{power:.0f} W", h.get("power", ()), width, "$accent",
                           high=max(peak_power, 1.0)))
        temp = gpu.temperature_c
        lines.append(meter("temp", None if temp is None else temp / 100, "n/a" if temp is None else f"{temp:.0f}°C",
                           h.get("temp", ()), width, "$error" if temp is not None and temp >= 85 else "$accent"))
        if gpu.process_memory_mb is not None:
            lines.append(Content.styled(f"     training process {fmt.megabytes(gpu.process_memory_mb)}",
                                        "$text-muted"))
    if sample.gpu_status:
        lines.append(Content.styled(sample.gpu_status, "$text-muted"))
    if lines:
        lines.append(Content(""))
    lines.append(meter("CPU", sample.cpu_percent / 100, f"{sample.cpu_percent:.0f}%", history.cpu, width))
    if sample.memory_total_mb:
        lines.append(meter("RAM", sample.memory_used_mb / sample.memory_total_mb,
                           f"{sample.memory_used_mb / 1024:.1f}/{sample.memory_total_mb / 1024:.0f} GB",
                           history.ram, width, "$secondary"))
    if sample.process_cpu_percent is None:
        lines.append(Content.styled("train  no training process", "$text-muted"))
    else:
        lines.append(Content.assemble(
            ("train".ljust(LABEL), "$text-muted"),
            f" CPU {sample.process_cpu_percent:.0f}% · RSS {fmt.megabytes(sample.process_rss_mb)}",
        ))
    return lines


class HardwarePane(Widget):
    DEFAULT_CSS = """
    HardwarePane { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._view: SessionView | None = None
        self.border_title = "Hardware"

    def show(self, view: SessionView) -> None:
        self._view = view
        self.refresh()

    def render(self) -> Content:
        if self._view is None:
            return Content("")
        return Content("\n").join(hardware_lines(self._view, self.content_size.width))
