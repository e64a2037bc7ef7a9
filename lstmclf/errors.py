"""User-facing errors: each carries one line that says what is wrong and where.

Jobs catch `LstmclfError`, print its message on one line and exit with status 2,
so bad input never surfaces as a traceback from deep inside Ray or PyTorch.
"""

import reprlib


class LstmclfError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class ConfigError(LstmclfError, ValueError):
    """Unknown key, wrong type or out-of-range value in a config or search space."""


class DataError(LstmclfError, ValueError):
    """A dataset file is missing, corrupt, truncated or inconsistent."""


class CheckpointError(LstmclfError, ValueError):
    """A checkpoint or weights file is missing, tampered with or does not fit the model."""


class StorageError(LstmclfError, OSError):
    """Object storage cannot be reached, the bucket is missing or credentials are absent."""


class RegistryError(LstmclfError, ValueError):
    """An unknown model or version, a version that already exists, or a lost promotion race."""


class WriteConflict(RegistryError):
    """A conditional write of a registry record lost to another writer (`Registry.write_record`)."""


def shown(value: object) -> str:
    """`repr(value)` for an error message, shortened: user input can be megabytes long."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxlevel = 3
