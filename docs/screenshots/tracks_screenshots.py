"""Screenshot of the Tracks panel on the DNA demo for the README, from the real panel.

    xvfb-run -s "-screen 0 1600x1000x24" python docs/screenshots/tracks_screenshots.py
"""

from __future__ import annotations

from _window import HERE, wait

DNA = HERE.parents[1] / "resources" / "demo" / "dna"


def main() -> None:
    import sys

    from PySide6.QtWidgets import QApplication

    from workbench.jobs import JobRunner
    from workbench.state.session import Session
    from workbench.views.tracks import TracksPanel

    app = QApplication.instance() or QApplication(sys.argv[:1])
    session = Session()
    session.open_workspace(DNA)
    runner = JobRunner(session.jobs)
    panel = TracksPanel(session, lambda: runner)
    panel.resize(1500, 800)
    panel.show()
    panel.top.setValue(4)
    job = panel.open_sequence(DNA / "heldout.fa")
    wait(app, 600, lambda: not job.active)
    panel.show_feature(int(panel.tracks.features[0]))  # what a click on its peak opens
    wait(app, 1.0)
    panel.grab().save(str(HERE / "tracks.png"))
    runner.wait(10)


if __name__ == "__main__":
    main()
