"""User-facing errors: raised at the boundary with a message naming the file or value and the fix.

The CLI prints such an error as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class DCVGError(ValueError):
    """Bad input from the user (a file, a flag, a config value)."""
