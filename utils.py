"""voxceleb_trainer's `utils` module, so its loss and model files import unchanged
(`from utils import accuracy`, `from utils import PreEmphasis`).

This project's own code takes these from loss/_objective.py and models/_frontends.py (PreEmphasis).
"""
from models._frontends import PreEmphasis  # noqa: F401  (B x T -> B x T, coef 0.97, reflect-padded)


def accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent of `output` (B x classes scores) against `target` (B class
    indices): a list with one 1-element tensor per k of `topk`, in that order."""
    ranked = output.topk(max(topk), dim=1).indices           # B x max(k), best first
    hits = ranked == target.view(-1, 1)
    percent = 100.0 / target.size(0)
    return [hits[:, :k].any(dim=1).float().sum(0, keepdim=True) * percent for k in topk]
