"""The console shows studies of the kept chain: progress in the status line, the tables on the studies screen."""

from __future__ import annotations

from pathlib import Path

from demo_session import T0, demo_session
from test_console_support import feed, make_app, run, screen_text

from loopdeck.console.screens.studies import StudiesScreen
from loopdeck.console.state import STUDIES, SessionView
from loopdeck.engine import events as ev


def study_events() -> list[ev.Event]:
    return [
        ev.StudyStarted(ts=T0 + 100, study=1, study_kind="ablation", incumbent=6, variants=("incumbent", "without #1"),
                        seeds=(1000001001, 1000001002)),
        ev.StudyRun(ts=T0 + 101, study=1, variant="incumbent", index=1, of=4, seed=1000001001, status="ok",
                    metric=1.88),
        ev.StudyRun(ts=T0 + 102, study=1, variant="without #1", index=3, of=4, seed=1000001001, status="ok",
                    metric=1.90),
    ]


def finished() -> ev.StudyFinished:
    return ev.StudyFinished(
        ts=T0 + 110, study=1, study_kind="ablation", incumbent=6, removable=(3,),
        lines=(ev.StudyLine(label="#1", change=1, description="MATRIX_LR 0.04", gain=0.02, band=0.001,
                            verdict="matters"),
               ev.StudyLine(label="#3", change=3, description="WARMDOWN 0.5", gain=0.0002, band=0.001,
                            verdict="nothing")),
        summary="ablation of #6: 1 matters, 1 nothing; removable: #3")


def test_study_events_fold_into_the_board() -> None:
    view = SessionView()
    for event in study_events():
        view.apply(event)
    assert view.studies.progress() == "ablation of #6: run 3/4 (without #1)"
    assert STUDIES in view.take_dirty()
    view.apply(finished())
    assert view.studies.progress() == "" and view.studies.results["ablation"].removable == (3,)


def test_studies_screen_shows_progress_then_the_table(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await feed(app, pilot, [*demo_session(), *study_events()])
            assert "ablation of #6: run 3/4 (without #1)" in screen_text(app)
            await pilot.press("b")
            await pilot.pause()
            assert isinstance(app.screen, StudiesScreen)
            await feed(app, pilot, [finished()])
            text = screen_text(app)
            assert "Ablation of #6 (study 1)" in text and "matters" in text and "nothing" in text
            assert "removable: #3" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, StudiesScreen)

    run(scenario())
