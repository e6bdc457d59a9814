"""Moved to loss/_objective.py (kept for files that import it here)."""
from loss._objective import flatten_labelled, require_views  # noqa: F401
