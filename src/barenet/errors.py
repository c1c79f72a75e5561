"""The errors a user can cause: bad data, bad model files, bad images, bad settings.

Each carries a one-line message that names the file or value at fault. The CLI prints it on
stderr and exits non-zero; library callers can catch `BarenetError`.
"""


class BarenetError(Exception):
    """A user-facing error whose message is complete on one line."""


class DataError(BarenetError):
    """A data file is missing, malformed or fails its checksum, or no source could provide it."""


class ModelFileError(BarenetError):
    """A model file is unreadable, truncated, tampered with or of another format."""


class ImageError(BarenetError):
    """An image file given for prediction cannot be used."""


class TrainingDiverged(BarenetError):
    """The training loss became NaN or infinite."""
