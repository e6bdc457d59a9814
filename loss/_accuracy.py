"""Moved to loss/_objective.py (kept for files that import it here)."""
from loss._objective import top1_accuracy  # noqa: F401
