"""The console's action registry: one list feeds the key bindings, the footer, the help screen and the palette."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class ConsoleAction:
    action: str  # the App's action_<name>
    key: str
    title: str
    tooltip: str
    controls_run: bool = False  # changes the run: never available when watching
    show: bool = True  # listed in the footer (when enabled)
    key_display: str | None = None
    palette: str = ""  # the command palette's wording, when the footer's is too terse

    @property
    def command(self) -> str:
        return self.palette or self.title

    @property
    def id(self) -> str:
        return f"loopdeck.{self.action}"

    def binding(self) -> Binding:
        return Binding(self.key, self.action, self.title, show=self.show, tooltip=self.tooltip, id=self.id,
                       key_display=self.key_display)


ACTIONS: tuple[ConsoleAction, ...] = (
    ConsoleAction("approve", "a", "Approve", "Commit the proposed change and run the experiment", True,
                  palette="Approve the proposed change"),
    ConsoleAction("veto", "v", "Veto", "Reject the proposed change; the agent is told it was vetoed", True,
                  palette="Veto the proposed change"),
    ConsoleAction("veto_with_note", "n", "Veto + note",
                  "Reject the proposed change with a note that goes back to the agent", True,
                  palette="Veto the proposed change with a note to the agent"),
    ConsoleAction("send_note", "m", "Note", "Send a note to the agent; it reads it in its next turn", True,
                  palette="Send a note to the agent"),
    ConsoleAction("go_autonomous", "t", "Autonomous",
                  "Turn the approval gate off: changes are committed and run without asking", True,
                  palette="Switch to autonomous mode (no approval gate)"),
    ConsoleAction("go_supervised", "t", "Supervised",
                  "Turn the approval gate on: every change waits for your decision", True,
                  palette="Switch to supervised mode (approve every change)"),
    ConsoleAction("cycle_research_mode", "r", "Research mode",
                  "Force the planner's next mode: explore → exploit → combine → ablate → auto (the planner chooses)",
                  True, show=False, palette="Cycle the research mode (explore, exploit, combine, ablate, auto)"),
    ConsoleAction("pause", "p", "Pause", "Pause the loop (the current step finishes first)", True,
                  palette="Pause the loop"),
    ConsoleAction("resume", "p", "Resume", "Resume the paused loop", True, palette="Resume the loop"),
    ConsoleAction("stop_after_current", "s", "Stop after",
                  "Stop the session once the current experiment has finished and been recorded", True,
                  palette="Stop after the current experiment"),
    ConsoleAction("abort", "x", "Abort", "Stop now: the running experiment is killed and recorded as interrupted",
                  True, palette="Abort the session now"),
    ConsoleAction("restart_engine", "r", "Restart engine",
                  "Start the background engine again after it died; it resumes where it stopped",
                  palette="Restart the background engine"),
    ConsoleAction("show_pane('agent')", "1", "Agent", "Show the agent's reasoning", show=False,
                  palette="Show the agent's reasoning"),
    ConsoleAction("show_pane('diff')", "2", "Change", "Show the change under review", show=False,
                  palette="Show the change under review"),
    ConsoleAction("show_pane('run')", "3", "Run", "Show the loss curve and the hardware", show=False,
                  palette="Show the loss curve and hardware"),
    ConsoleAction("show_pane('experiments')", "4", "Experiments", "Show the experiments table", show=False,
                  palette="Show the experiments table"),
    ConsoleAction("show_studies", "b", "Studies", "Show the ablation and scale-transfer results of the kept chain",
                  show=False, palette="Show the studies: what each kept change contributes, and whether it transfers"),
    ConsoleAction("help", "f1,question_mark", "Help", "Show every key and what it does", key_display="?",
                  palette="Help: keys"),
    ConsoleAction("quit", "q", "Quit", "Leave the console: detaches from a background engine (the research goes "
                  "on); with --foreground the loop stops, so it asks first"),
)

CONTROL_ACTIONS = frozenset(a.action for a in ACTIONS if a.controls_run)
DECISION_ACTIONS = frozenset({"approve", "veto", "veto_with_note"})


def bindings() -> list[Binding]:
    return [a.binding() for a in ACTIONS]


def action_name(action: str) -> str:
    """The method part of an action string: "show_pane('diff')" -> "show_pane"."""
    return action.split("(", 1)[0]
