"""smartrouter: ML payment routing for an airline merchant."""

__version__ = "0.1.0"
