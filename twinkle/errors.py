"""The exceptions twinkle raises, in one tree.

Every error says what is wrong and what to do about it. Each class also derives from the builtin a caller would
naturally catch (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working for code written
against upstream twinkle.

* TwinkleError
    * ConfigError (ValueError): a bad argument or setting (mode, mesh, sizes)
        * UnknownComponentError: a component name (template, preprocessor, ...) that is not registered
        * BatchSizeError: a batch size that does not fit the data-parallel layout
            * PairedBatchError (AssertionError): an odd number of rows given to a preference loss
    * DataError (ValueError): a dataset or sample that cannot be used
        * DataFileNotFoundError (FileNotFoundError): a local data file or folder that does not exist
        * SampleTooLongError: an encoded sample longer than ``max_length`` under ``truncation_strategy='raise'``
    * TemplateError (ValueError): a tokenizer or chat template that cannot encode the input
    * HubError (RuntimeError): a model or dataset hub (ModelScope, Hugging Face) that cannot serve an id
    * NoLengthError (NotImplementedError, TypeError): ``len()`` or indexing of a stream (upstream raises
      NotImplementedError; ``len()`` callers expect TypeError)
    * NotBuiltError (NotImplementedError): a name of the upstream API that Twinkle Commons does not build (yet);
      the message names the feature
    * MissingDependencyError (ImportError): a GPU-side component (vLLM, Megatron, NCCL) whose package or device is
      not here; the message names the extra to install

Components of other packages append their own classes at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NoReturn

__all__ = [
    "BatchSizeError",
    "ConfigError",
    "DataError",
    "DataFileNotFoundError",
    "HubError",
    "NoLengthError",
    "NotBuiltError",
    "PairedBatchError",
    "SampleTooLongError",
    "TemplateError",
    "TwinkleError",
    "UnknownComponentError",
]


class TwinkleError(Exception):
    """Base class of every error twinkle raises on purpose."""


class ConfigError(TwinkleError, ValueError):
    """A bad argument or setting: the message names the value and the accepted ones."""


class UnknownComponentError(ConfigError):
    """A component looked up by a name that is not registered; the message lists the known names."""


class BatchSizeError(ConfigError):
    """A batch size that does not fit the data-parallel layout (too small, or not divisible)."""


class DataError(TwinkleError, ValueError):
    """A dataset, row or sample that cannot be used as given."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A local dataset path that does not exist."""


class SampleTooLongError(DataError):
    """An encoded sample longer than ``max_length`` while ``truncation_strategy='raise'``."""


class TemplateError(TwinkleError, ValueError):
    """A tokenizer or chat template that cannot encode the given input."""


class HubError(TwinkleError, RuntimeError):
    """A hub (ModelScope or Hugging Face) that cannot serve the requested id."""


# ---- errors of other twinkle packages are appended below this line ----


# ---- twinkle.model (training) ----


class ModelNotFoundError(HubError):
    """A model id that is neither an existing local folder nor resolvable on its hub; the message names the id."""


class AdapterError(ConfigError):
    """A LoRA config or adapter that cannot be used: it targets no module, or names an unknown adapter."""


class OptimizerNotSetError(TwinkleError, RuntimeError):
    """An optimizer step (or a resume) before ``set_optimizer``."""


class CheckpointError(TwinkleError, OSError):
    """A checkpoint that cannot be written (unwritable folder) or read (missing files)."""


class UnsupportedParallelismError(ConfigError):
    """A device mesh or strategy that ``TransformersModel`` cannot train with; the message says why."""


__all__ += [
    "AdapterError", "CheckpointError", "ModelNotFoundError", "OptimizerNotSetError", "UnsupportedParallelismError"
]


class MissingDependencyError(TwinkleError, ImportError):
    """A GPU-side component (vLLM, Megatron, NCCL) whose package or device is not here; the message names what is
    missing and the ``pip install 'twinkle-commons[...]'`` extra that brings it."""


__all__ += ["MissingDependencyError"]


class NoLengthError(TwinkleError, NotImplementedError, TypeError):
    """``len()`` or ``[i]`` on a stream, which has neither; iterate it instead."""


class NotBuiltError(TwinkleError, NotImplementedError):
    """A name of the upstream twinkle API that Twinkle Commons does not build; the message names the feature."""


class PairedBatchError(BatchSizeError, AssertionError):
    """An odd number of rows for a pairwise loss (upstream asserts; ``except AssertionError`` catches this)."""


# ---- multi-tenant models (twinkle.model.multi_lora)


class SlotsExhaustedError(TwinkleError, RuntimeError):
    """Every LoRA slot of a ``MultiLoraTransformersModel`` is taken; the message names ``max_loras``."""


class InputTooLongError(ConfigError):
    """A batch with more tokens than the model's ``max_length``; the message names the limit."""


__all__ += ["InputTooLongError", "SlotsExhaustedError"]


def not_built_attributes(module: str, messages: Mapping[str, str]) -> Callable[[str], NoReturn]:
    """A module ``__getattr__`` for the upstream names a module leaves out: reading one raises ``NotBuiltError``
    with its message (what is missing, what to use instead); any other unknown name is a plain AttributeError."""

    def __getattr__(name: str) -> NoReturn:
        if name in messages:
            raise NotBuiltError(messages[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
