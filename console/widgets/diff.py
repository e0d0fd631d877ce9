"""The change under review: a unified diff with file names, +/− counts and Python syntax highlighting."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.highlight import highlight
from textual.widgets import Static

from loopdeck.console.state import SessionView
from loopdeck.console.views import ExperimentView

_GUTTER = {"+": ("+", "bold $text-success", "on $success 12%"), "-": ("−", "bold $text-error", "on $error 12%"),
           " ": (" ", "", "")}


@dataclass
class FileDiff:
    path: str
    lines: list[str] = field(default_factory=list)  # hunk headers and body lines, headers excluded
    added: int = 0
    removed: int = 0


def split_files(diff: str) -> list[FileDiff]:
    """Group a unified diff by file; the path comes from the `+++` line (or `---` for a deletion)."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    old_path = ""
    for line in diff.splitlines():
        if line.startswith("diff --git") or line.startswith("index ") or line.startswith("new file") \
                or line.startswith("deleted file"):
            continue
        if line.startswith("--- "):
            old_path = _strip_prefix(line[4:])
            continue
        if line.startswith("+++ "):
            path = _strip_prefix(line[4:])
            current = FileDiff(old_path if path == "/dev/null" else path)
            files.append(current)
            continue
        if current is None:
            current = FileDiff("(diff)")
            files.append(current)
        current.lines.append(line)
        if line.startswith("+"):
            current.added += 1
        elif line.startswith("-"):
            current.removed += 1
    return files


def _strip_prefix(path: str) -> str:
    path = path.split("\t", 1)[0].strip()
    return path[2:] if path.startswith(("a/", "b/")) else path


def render_file(diff: FileDiff) -> Content:
    """One file's hunks: code highlighted once as a whole (so multi-line strings colour right), then each line
    gets its gutter and a tinted background for additions and removals."""
    body = [line for line in diff.lines if not line.startswith("@@")]
    highlighted = highlight("\n".join(line[1:] for line in body), language="python").split("\n", allow_blank=True)
    if len(highlighted) != len(body):  # odd line separators inside the code: colour nothing rather than shift
        highlighted = [Content(line[1:]) for line in body]
    code_lines = iter(highlighted)
    width = max((len(line) for line in diff.lines), default=0) + 1
    out: list[Content] = []
    for line in diff.lines:
        if line.startswith("@@"):
            out.append(Content.styled(line, "$text-secondary"))
            continue
        marker, marker_style, tint = _GUTTER.get(line[:1], _GUTTER[" "])
        code = next(code_lines, Content(line[1:]))
        row = Content.assemble((marker, marker_style), " ", code).extend_right(max(0, width - len(line)))
        out.append(row.stylize_before(tint) if tint else row)
    return Content("\n").join(out)


def render_diff(diff: str) -> Content:
    files = split_files(diff)
    if not files:
        return Content.styled("(no textual change)", "$text-muted")
    parts = []
    for file in files:
        parts.append(Content.assemble((file.path, "bold $text-primary"), "  ", (f"+{file.added}", "$text-success"),
                                      " ", (f"−{file.removed}", "$text-error")))
        parts.append(render_file(file))
    return Content("\n").join(parts)


def diff_title(row: ExperimentView) -> str:
    files = ", ".join(row.files) if row.files else ""
    return f"Change #{row.id}" + (f" · {files}" if files else "") + f" · +{row.added} −{row.removed}"


def shown_experiment(view: SessionView) -> ExperimentView | None:
    """The pending change if there is one, else the newest change the agent proposed."""
    for candidate in (view.pending, view.current):
        row = view.experiments.get(candidate) if candidate is not None else None
        if row is not None and row.diff:
            return row
    with_diff = [row for row in view.experiments.values() if row.diff]
    return max(with_diff, key=lambda r: r.id) if with_diff else None


class DiffPane(VerticalScroll):
    DEFAULT_CSS = """
    DiffPane { overflow-x: auto; }
    DiffPane > #diff-body { width: auto; min-width: 100%; text-wrap: nowrap; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._key: tuple | None = None
        self.border_title = "Change"

    def compose(self) -> ComposeResult:
        yield Static(Content.styled("No change proposed yet.", "$text-muted"), id="diff-body")

    def show(self, view: SessionView) -> None:
        row = shown_experiment(view)
        pending = row is not None and view.pending == row.id
        if row is None:
            return
        self.border_title = diff_title(row)
        if pending:
            self.border_subtitle = "awaiting your decision" if not view.watch else "awaiting a decision"
        else:
            self.border_subtitle = row.status if row.status not in ("proposed",) else ""
        self.set_class(pending, "-pending")
        key = (row.id, row.diff)
        if key != self._key:
            self._key = key
            self.query_one("#diff-body", Static).update(
                Content.assemble((row.description, "bold"), "\n", (row.rationale, "italic $text-muted"), "\n\n")
                .append(render_diff(row.diff))
            )
            self.scroll_home(animate=False)
