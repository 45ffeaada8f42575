"""Errors a user can act on. Each names the cause and the fix; the CLI prints them as one line."""


class SmartrouterError(Exception):
    """Base class: message = cause + fix. The CLI prints it and exits non-zero, without a traceback."""

    exit_code = 2


class ConfigError(SmartrouterError):
    """A setting or parameter is invalid."""


class WarehouseError(SmartrouterError):
    """The warehouse (local world or Snowflake) cannot be reached or queried."""


class DataCheckError(SmartrouterError):
    """Data read back from the warehouse failed a check (names table, check, offending count)."""


class ArtifactError(SmartrouterError):
    """A model artifact is missing, corrupt or inconsistent (names the file)."""


class PipelineError(SmartrouterError):
    """A pipeline run failed or could not start."""
