"""One exception type per failure family.

Every message names the file, line or value at fault and says what to do.
The CLI turns any ``SfmfeatError`` into one line on stderr and a non-zero exit.
"""


class SfmfeatError(Exception):
    """Base class of every error sfmfeat raises on purpose."""


class InputError(SfmfeatError):
    """A user-supplied path, list or argument is missing or malformed."""


class ImageReadError(InputError):
    """An image file cannot be decoded or is unusable (empty, too small, not an image)."""


class ConfigError(SfmfeatError):
    """An unknown preset name or an invalid configuration value."""


class WeightsError(SfmfeatError):
    """A weight file is missing, corrupt, of the wrong variant or does not match the network."""


class StoreError(SfmfeatError):
    """An HDF5 feature/match file is unreadable, of another schema or made with another config."""


class ReconstructionError(SfmfeatError):
    """COLMAP import, verification or mapping failed."""


class LocalizationError(SfmfeatError):
    """A query cannot be localized or its inputs are invalid."""


class ReportError(SfmfeatError):
    """A folder is not a run output, or what it holds cannot be shown in a report."""


class ExecutorError(SfmfeatError):
    """A distributed run cannot start or a worker failed (cluster unreachable, no GPU, ...)."""
