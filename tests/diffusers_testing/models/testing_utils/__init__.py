# The exports of diffusers' tests/models/testing_utils/__init__.py that are vendored here (see README.md).
from .common import BaseModelTesterConfig, ModelTesterMixin
from .memory import LayerwiseCastingTesterMixin
from .training import TrainingTesterMixin

__all__ = ["BaseModelTesterConfig", "LayerwiseCastingTesterMixin", "ModelTesterMixin", "TrainingTesterMixin"]
