"""Parallelism beyond data parallel: context (sequence) parallelism for the Wan transformer."""

from .context import ContextLayout, context_layout, enable_context_parallel

__all__ = ["ContextLayout", "context_layout", "enable_context_parallel"]
