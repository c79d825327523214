"""The training stages' error: a run that must stop, with a message that says what to do."""

from salt.errors import UserError


class TrainingError(UserError, RuntimeError):
    """A run that must stop: non-finite loss, too many bad videos, an unusable checkpoint.

    `every_rank`: every rank raises it alike, so rank 0 alone prints it."""

    def __init__(self, message: str, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank
