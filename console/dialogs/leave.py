"""The questions asked before a console leaves or ends a session: detach, quit a --foreground loop, stop, abort."""

from __future__ import annotations

from loopdeck.console.dialogs.confirm import ChoiceDialog


def detach_dialog(engine_pid: int | None, workspace: str) -> ChoiceDialog:
    return ChoiceDialog(
        "Detach from the session?",
        f"The research goes on in the background engine (pid {engine_pid}). Attach again with `loopdeck attach "
        f"{workspace}`; `loopdeck ls` lists running sessions. To end the research, press s (stop after this "
        f"experiment) or x (abort now) instead, or run `loopdeck stop {workspace}`.",
        [("detach", "Detach", "primary")],
    )


def quit_foreground_dialog() -> ChoiceDialog:
    return ChoiceDialog(
        "Quit and stop the research loop?",
        "The loop runs inside this console (--foreground), so quitting stops it. Either let the current "
        "experiment finish and be recorded, or abort it now (it is recorded as interrupted and reverted). Resume "
        "later with `loopdeck run`. To leave a loop running, start it without --foreground: `loopdeck run DIR` "
        "runs it in the background and `q` detaches.",
        [("stop", "Finish experiment, then quit", "primary"), ("abort", "Abort now and quit", "error")],
    )


def stop_dialog() -> ChoiceDialog:
    return ChoiceDialog("Stop the session after this experiment?", "The running experiment finishes and is "
                        "recorded, then the loop stops. Resume later with `loopdeck run`.",
                        [("stop_after_current", "Stop after this experiment", "warning")])


def abort_dialog() -> ChoiceDialog:
    return ChoiceDialog("Abort the session?", "The running experiment is killed, recorded as interrupted and "
                        "reverted; the loop stops. Resume later with `loopdeck run`.",
                        [("abort", "Abort now", "error")])
