"""Errors users see: one line naming what and where. The CLI prints them without a traceback."""


class HomellmError(Exception):
    """Base of every error meant for a person; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(HomellmError):
    """A stack file or a flag is wrong (usage error)."""

    exit_code = 2


class EngineError(HomellmError):
    """An engine is missing, refuses our flags, or did not become ready."""


class SupervisorError(HomellmError):
    """A replica could not be started or kept running."""
