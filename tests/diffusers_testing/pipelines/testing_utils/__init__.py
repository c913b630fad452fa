# The exports of diffusers' tests/pipelines/testing_utils/__init__.py that are vendored here (see README.md).
from .common import BasePipelineTesterConfig, PipelineTesterMixin

__all__ = ["BasePipelineTesterConfig", "PipelineTesterMixin"]
