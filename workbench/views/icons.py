"""Icons from qtawesome's Font Awesome set, drawn in the application's ink colour."""

from __future__ import annotations

from PySide6.QtGui import QIcon


def icon(name: str, color: str = "#444444") -> QIcon:
    import qtawesome

    return qtawesome.icon(name, color=color)
