"""Tasks (registry group ``task``): data, loss and metrics. Importing this package registers them.

- ``code_lm``: the Python standard library's sources (the default corpus, split by file).
- ``text_lm``: your own files (glob patterns).
- ``copy``: a synthetic copy task for fast tests.
- ``far_match``: do two marked tokens in different groups match (FIT's long-range proxy).
- ``keywords``: which keyword occurs intact among near-misses (needs many heads in one layer).
- ``listops``, ``pathfinder``: Long Range Arena-style sequence classification (generated, cached).
- ``text_classification``, ``image_sequence``: real fortunes texts (by language or topic) and
  real images (Fashion-MNIST, digits) as LRA Text / Image-style classification (cached).
- ``retrieval``: LRA Retrieval-style document-pair matching on Python sources (two towers).
"""

from __future__ import annotations

from .base import Task, TaskConfig, batch_generator
from .classification import ClassificationTask, ClassificationTaskConfig
from .code_lm import CodeLMConfig, CodeLMTask, stdlib_files
from .copy import CopyTask, CopyTaskConfig
from .far_match import FarMatchConfig, FarMatchTask
from .image_sequence import ImageSequenceConfig, ImageSequenceTask
from .keywords import KeywordsConfig, KeywordsTask
from .listops import ListOpsConfig, ListOpsTask
from .lm import LMTask, LMTaskConfig
from .pathfinder import PathfinderConfig, PathfinderTask
from .retrieval import RetrievalConfig, RetrievalTask
from .text_classification import TextClassificationConfig, TextClassificationTask
from .text_lm import TextLMConfig, TextLMTask

__all__ = [
    "ClassificationTask",
    "ClassificationTaskConfig",
    "CodeLMConfig",
    "CodeLMTask",
    "CopyTask",
    "CopyTaskConfig",
    "FarMatchConfig",
    "FarMatchTask",
    "ImageSequenceConfig",
    "ImageSequenceTask",
    "KeywordsConfig",
    "KeywordsTask",
    "LMTask",
    "LMTaskConfig",
    "ListOpsConfig",
    "ListOpsTask",
    "PathfinderConfig",
    "PathfinderTask",
    "RetrievalConfig",
    "RetrievalTask",
    "Task",
    "TaskConfig",
    "TextClassificationConfig",
    "TextClassificationTask",
    "TextLMConfig",
    "TextLMTask",
    "batch_generator",
    "stdlib_files",
]
