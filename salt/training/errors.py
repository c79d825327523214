"""The training stages' error: a run that must stop, with a message that says what to do."""


class TrainingError(RuntimeError):
    """A run that must stop: non-finite loss, too many bad videos, an unusable checkpoint."""
