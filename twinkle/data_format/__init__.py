"""The shapes data takes between components: raw trajectories, encoded features, model outputs, samples."""

from twinkle.data_format.input_feature import InputFeature, ModelOutput
from twinkle.data_format.sampling import SampledSequence, SampleResponse, SamplingParams
from twinkle.data_format.trajectory import Message, Trajectory, get_user_data, set_user_data

__all__ = [
    "InputFeature",
    "Message",
    "ModelOutput",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "Trajectory",
    "get_user_data",
    "set_user_data",
]
