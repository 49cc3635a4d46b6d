from twinkle.model.transformers.transformers_model import TransformersModel

__all__ = ["TransformersModel"]
