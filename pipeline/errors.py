"""The kinds of failure a user must tell apart: a wrong setting, bad data, a missing resource, or a
computation whose numbers went non-finite.

Every part of the system raises these (not bare ValueError/RuntimeError) with a message that names the
file, key or config path and says what to do, so a CLI can print it without a traceback.
"""


class W3Error(Exception):
    """Base of the project's own errors."""


class ConfigError(W3Error, ValueError):
    """A setting is wrong: unknown key, wrong type, impossible value. Name the key path."""


class DataError(W3Error):
    """An input file is malformed or undecodable. Name the file (and line/key)."""


class ResourceError(W3Error):
    """Something the run needs is absent: a shard directory, a checkpoint, a library, a GPU."""


class NumericError(W3Error):
    """A loss or weights went NaN/inf (a NaN setting is a ConfigError). Name the steps or the tensors."""
