"""opsbook's shared helpers: runbook notebooks stay thin narrative over this package."""
__version__ = "0.1.0"
