"""Errors a user can act on: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input: a file, key or value the user must change."""


class ConfigError(UserError):
    """A search-space file (or an override) is invalid."""
