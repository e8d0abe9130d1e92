"""Icons from qtawesome's Font Awesome set, drawn in the application's ink colour.

Importing qtawesome costs a large part of start-up, so widgets built before the first paint
register their icons with `icon_later` (they show their text meanwhile) and the window calls
`load_pending_icons` once it has been painted.
"""

from __future__ import annotations

from PySide6.QtGui import QIcon

_pending: list = []


def icon(name: str, color: str = "#444444") -> QIcon:
    import qtawesome

    return qtawesome.icon(name, color=color)


def icon_later(button, name: str) -> None:
    _pending.append((button, name))


def load_pending_icons() -> None:
    while _pending:
        button, name = _pending.pop()
        try:
            button.setIcon(icon(name))
        except RuntimeError:  # the button was deleted meanwhile
            pass
