"""Trial scores from per-crop embeddings, as matrix products rather than per-trial loops."""
import torch
import torch.nn.functional as F


def score_trials(crops, pairs, normalize=True, chunk=8192):
    """Score every trial (a, b) from crop embeddings `crops` (files x crops x D).

    normalize=True: the mean cosine similarity over all crop pairs of a and b. For unit
    vectors, mean_ij <u_i, v_j> = <mean_i u_i, mean_j v_j>, so each trial is one dot product
    of two crop means. normalize=False (objectives trained on raw Euclidean distances): minus
    the mean Euclidean distance over crop pairs, computed a chunk of trials at a time.
    """
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    crops = crops.float()
    if normalize:
        means = F.normalize(crops, dim=-1).mean(dim=1)
        return (means[pairs[:, 0]] * means[pairs[:, 1]]).sum(dim=-1)
    scores = [-torch.cdist(crops[block[:, 0]], crops[block[:, 1]]).mean(dim=(1, 2))
              for block in pairs.split(chunk)]
    return torch.cat(scores)
