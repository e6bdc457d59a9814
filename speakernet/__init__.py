"""The machinery under the entry points: shared helpers (audio constants, atomic files), and
the layers the trainer, the loader and evaluation are built on. See docs/design.md."""
