"""The one exception type users see: it carries a message that names the cause and the fix.

`run.py` prints a `UserFacingError` as one line (no traceback); anything else is a bug and keeps its
traceback. Leaf module: every package may import it.
"""


class UserFacingError(Exception):
    """Bad input, a missing dependency or missing weights: something the user can fix."""


class ConfigError(UserFacingError):
    """An option that does not exist or cannot work on this machine."""


class DataError(UserFacingError):
    """A malformed or missing input file; the message names `file:line`."""


class ModelUnavailableError(UserFacingError):
    """Weights that cannot be loaded; the message names the id and `model.path`."""


class NotCached(UserFacingError):
    """A result asked of the cache only (another arm's, `arms.missing=fail`) that is not there."""


def unknown_option(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    return ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
