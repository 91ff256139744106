"""The Teams reviewer channel (Bot Framework SDK). Importing the package loads no SDK:
`serve` imports `channel.py` (and with it the SDK, ~0.5 s) only when Teams is configured."""


class TeamsNotConfigured(RuntimeError):
    """Teams is asked for but cannot work with these settings; the message says what to set."""
