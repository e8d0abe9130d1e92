"""The one user-facing error type.

A `BioLLMError` carries one line that says what is wrong and what to do. The CLI prints it and
exits with code 2 (no traceback); the GUI shows it in a dialog. Anything else is a bug.
"""


class BioLLMError(Exception):
    """Bad input or an impossible request, explained in one line for the user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return self.args[0]
