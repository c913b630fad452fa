"""User-facing errors: raised at the boundary with a message naming the file or value and the fix.

The CLI prints such an error as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class DCVGError(ValueError):
    """Bad input from the user (a file, a flag, a config value)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): for one-line errors that wrap
    a library's multi-line message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
