"""The dispatcher loop (matcher, reaper, start-deadline re-dispatch)."""
