"""The package version (upstream keeps it in ``twinkle.version``)."""

__version__ = "0.1.0"
__release_datetime__ = "2026-11-29 00:00:00"
