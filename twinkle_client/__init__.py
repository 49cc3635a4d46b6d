"""twinkle HTTP mode, client side: train and sample on a ``twinkle-server`` with the twinkle API.

>>> from twinkle_client import init_twinkle_client
>>> from twinkle_client.model import MultiLoraTransformersModel
>>> init_twinkle_client("http://127.0.0.1:8000", api_key="my-key")
>>> model = MultiLoraTransformersModel("my-model")     # the server's model name

Datasets and dataloaders stay local (``twinkle.dataset``, ``twinkle.dataloader``; batches are sent as JSON) or
live on the server (``twinkle_client.dataset``, ``twinkle_client.dataloader``).
"""

from twinkle_client.client import TwinkleClient, init_twinkle_client
from twinkle_client.http import TwinkleClientError, get_base_url
from twinkle_client.tinker import init_tinker_client

__all__ = ["TwinkleClient", "TwinkleClientError", "get_base_url", "init_tinker_client", "init_twinkle_client"]
