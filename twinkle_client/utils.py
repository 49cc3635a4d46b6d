import logging

logger = logging.getLogger("twinkle_client")
