"""Input processors turn encoded rows into model inputs (padding, packing)."""

from twinkle.processor.base import PAD_VALUES, InputProcessor

__all__ = ["PAD_VALUES", "InputProcessor"]
