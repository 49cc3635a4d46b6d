"""Scheduler logic. Routers call these; they raise ``scheduler.errors`` and never build HTTP responses."""
