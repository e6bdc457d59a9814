"""Batch shapes of the objective protocol: x is N x V x D (V views per group), or N x D."""


def flatten_labelled(x, label):
    """Classifier objectives: every view is one more labelled example.

    N x V x D with N labels -> N*V x D with N*V labels (row n*V + v is view v of group n);
    N x D passes through.
    """
    if x.dim() == 3:
        label = label.repeat_interleave(x.size(1))
        x = x.reshape(-1, x.size(-1))
    return x, label


def require_views(x, name, minimum=2, exactly=None):
    """Metric objectives need N x V x D with enough views; fail with the fix in the message."""
    views = x.size(1) if x.dim() == 3 else 1
    if views < minimum or (exactly is not None and views != exactly):
        wanted = exactly if exactly is not None else f"at least {minimum}"
        raise ValueError(f"{name} needs {wanted} utterances per speaker, got {views}: "
                         f"set --nPerSpeaker {exactly or minimum}")
