"""Protocol clients of upstream's twinkle_agentic (not built)."""
