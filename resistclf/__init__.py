"""resistclf: detect and correct a network's mistakes by how hard they are to attack."""

from ._attack import AttackResult, ResistanceAttack
from ._cache import AttackCache, ResultStore
from ._estimator import ResistanceClassifier, make_detector
from ._modes import fastest_mode
from .callbacks import ResistanceMonitor

__version__ = "0.1.0"

__all__ = ["AttackCache", "AttackResult", "ResistanceAttack", "ResistanceClassifier",
           "ResistanceMonitor", "ResultStore", "__version__", "fastest_mode", "make_detector"]
