"""The exceptions formerlab raises on purpose.

Every error a user can cause derives from :class:`FormerlabError`; the CLI prints these as one line
(no traceback unless ``--debug``) and exits non-zero.
"""

from __future__ import annotations


class FormerlabError(Exception):
    """Base class of every deliberate formerlab error."""


class ConfigError(FormerlabError, ValueError):
    """A configuration is invalid: names the field path, the bad value and what is allowed."""


class DataError(FormerlabError):
    """Input data is missing, unreadable or malformed."""


class InputError(FormerlabError, ValueError):
    """A tensor passed to a model is out of range (token id, sequence length, shape)."""


class CheckpointError(FormerlabError):
    """A checkpoint is missing, incomplete or fails its manifest."""


class TrainingError(FormerlabError):
    """Training cannot go on (e.g. too many consecutive non-finite steps)."""


class ClaimError(FormerlabError):
    """A claim check is malformed or cannot be run."""
