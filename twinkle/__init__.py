"""twinkle."""
