"""The exceptions: the one the CLI turns into a one-line message and exit code 2, and the one that stops
scoring early."""


class RecipeSearchError(Exception):
    """A user-facing problem: bad input, a mismatch, a missing file. Its message is one line."""

    def __init__(self, message: str, path: object | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


class StopScoring(Exception):
    """Raised by an ``on_chunk`` callback to stop scoring early (the trial is pruned)."""
