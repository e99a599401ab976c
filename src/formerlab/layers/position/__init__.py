"""Position kinds: additive (learned, sinusoidal), rotary (rope) or none."""

from .base import Position, PositionConfig
from .learned import LearnedPosition, LearnedPositionConfig
from .none import NoPosition, NoPositionConfig
from .rope import RotaryPosition, RotaryPositionConfig
from .sinusoidal import SinusoidalPosition, SinusoidalPositionConfig

__all__ = [
    "LearnedPosition",
    "LearnedPositionConfig",
    "NoPosition",
    "NoPositionConfig",
    "Position",
    "PositionConfig",
    "RotaryPosition",
    "RotaryPositionConfig",
    "SinusoidalPosition",
    "SinusoidalPositionConfig",
]
