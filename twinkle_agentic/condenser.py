"""Not built in Twinkle Commons: importing this raises NotBuiltError naming the feature."""

from twinkle_agentic import not_built

not_built(
    "twinkle_agentic.condenser",
    "the long-context condenser")
