"""The one exception type raised for bad data input.

Every message is a single line that names the file (and line or field where there is one), so the
prepare CLI can print it as-is and exit non-zero.
"""


class DataError(ValueError):
    """Bad input data or a bad prepared-data folder. The message is one line naming the culprit."""

    def __init__(self, message: str) -> None:
        # Keep messages to one line whatever the caller passed (JSON error text may hold newlines).
        super().__init__(" ".join(str(message).split()))
