"""Tasks (registry group ``task``): data, loss and metrics. Importing this package registers them.

- ``code_lm``: the Python standard library's sources (the default corpus, split by file).
- ``text_lm``: your own files (glob patterns).
- ``copy``: a synthetic copy task for fast tests.
"""

from __future__ import annotations

from .base import Task, TaskConfig, batch_generator
from .code_lm import CodeLMConfig, CodeLMTask, stdlib_files
from .copy import CopyTask, CopyTaskConfig
from .lm import LMTask, LMTaskConfig
from .text_lm import TextLMConfig, TextLMTask

__all__ = [
    "CodeLMConfig",
    "CodeLMTask",
    "CopyTask",
    "CopyTaskConfig",
    "LMTask",
    "LMTaskConfig",
    "Task",
    "TaskConfig",
    "TextLMConfig",
    "TextLMTask",
    "batch_generator",
    "stdlib_files",
]
