"""statsig-relay: moves events between Statsig and other systems, durably."""

# The one place the version is written: pyproject.toml reads it (``dynamic = ["version"]``), so
# it needs no importlib.metadata at start-up (the spool's writer process imports this package).
__version__ = "0.1.0"
