"""Celery app and the dispatcher loop (matcher, reaper, start-deadline re-dispatch)."""
