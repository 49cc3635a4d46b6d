"""The shapes data takes between components: raw trajectories, encoded features, model outputs, samples."""

from twinkle.data_format.input_feature import InputFeature, LossOutput, ModelOutput
from twinkle.data_format.sampling import SampledSequence, SampleResponse, SamplingParams
from twinkle.data_format.trajectory import (
    Message,
    Tool,
    ToolCall,
    Trajectory,
    get_user_data,
    pack_value,
    set_user_data,
    user_data_get,
)

__all__ = [
    "InputFeature",
    "LossOutput",
    "Message",
    "ModelOutput",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "Tool",
    "ToolCall",
    "Trajectory",
    "get_user_data",
    "pack_value",
    "set_user_data",
    "user_data_get",
]
