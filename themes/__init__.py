"""loopdeck's Textual themes (dark and light) and the stylesheet pieces every screen shares.

Colours are defined here and only here; stylesheets and widgets refer to theme variables ($success, $panel, …),
so every built-in Textual theme works too.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

LOOPDECK_DARK = Theme(
    name="loopdeck-dark",
    primary="#5EC4FF",
    secondary="#A391F7",
    accent="#FFB454",
    warning="#E8C547",
    error="#F26D78",
    success="#7FD962",
    foreground="#D6DEEB",
    background="#0E1419",
    surface="#141B22",
    panel="#1C2630",
    dark=True,
    variables={
        "footer-key-foreground": "#5EC4FF",
        "block-cursor-text-style": "bold",
        "border-blurred": "#2A3644",
    },
)

LOOPDECK_LIGHT = Theme(
    name="loopdeck-light",
    primary="#0B6BCB",
    secondary="#6E56CF",
    accent="#B85C00",
    warning="#9A6700",
    error="#CF222E",
    success="#1A7F37",
    foreground="#1F2328",
    background="#F6F8FA",
    surface="#FFFFFF",
    panel="#E7ECF1",
    dark=False,
    variables={
        "footer-key-foreground": "#0B6BCB",
        "block-cursor-text-style": "bold",
        "border-blurred": "#C9D1D9",
    },
)

LOOPDECK_THEMES = (LOOPDECK_DARK, LOOPDECK_LIGHT)
DEFAULT_THEME = LOOPDECK_DARK.name

# The look of an experiment's status everywhere it appears: (label, theme variable).
STATUS_LOOK: dict[str, tuple[str, str]] = {
    "keep": ("kept", "success"),
    "discard": ("discarded", "warning"),
    "crash": ("crashed", "error"),
    "timeout": ("timeout", "error"),
    "nan": ("nan", "error"),
    "aborted": ("aborted", "warning"),
    "interrupted": ("interrupted", "warning"),
    "rejected": ("rejected", "error"),
    "vetoed": ("vetoed", "text-muted"),
    "running": ("running", "accent"),
    "approved": ("approved", "accent"),
    "awaiting": ("awaiting", "primary"),
    "proposed": ("proposed", "text-muted"),
}

STYLESHEET = Path(__file__).with_name("loopdeck.tcss")
