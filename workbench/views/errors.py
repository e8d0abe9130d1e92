"""Errors a panel reports on its own status line (no modal dialog: the panel stays usable)."""

from __future__ import annotations

import logging

from biollm_engine.errors import BioLLMError

log = logging.getLogger("workbench")


def show_error(label, text: str) -> None:
    """Log `text` and show it in red on `label` (a QLabel)."""
    log.error(text)
    label.setText(f"<span style='color:#b2182b'>{text}</span>")


def guarded(fn, on_error) -> None:
    """Run a file action (open, export); a bad input or path becomes one line to `on_error`."""
    try:
        log.info("done: %s", fn())
    except (BioLLMError, OSError) as e:
        on_error(e.message if isinstance(e, BioLLMError) else str(e))
