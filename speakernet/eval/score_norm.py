"""Adaptive symmetric score normalisation (AS-norm) against a cohort of speaker embeddings.

For a trial (e, t) with raw score s,

    s_norm = 0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)

where mu_e and sigma_e are the mean and (population) standard deviation of the top_n highest
scores of e against the cohort, likewise for t. Only each side's most similar cohort speakers
count ("adaptive"), so the statistics describe the impostors that actually compete with it.

Cohort scores must use the same bilinear form as the trial scores, otherwise s and mu live
on different scales: here both are dot products of file embeddings (mean of unit crop
embeddings, see embeddings.file_embeddings) with the cohort's speaker means. Everything is
one matrix product per chunk of files plus torch.topk; there is no per-trial loop.
"""
import logging

import torch

log = logging.getLogger(__name__)

# Guards the division when a file's top cohort scores are all equal (degenerate cohorts).
MIN_SIGMA = 1e-6


def cohort_stats(file_emb, cohort_emb, top_n, chunk=4096):
    """Mean and std of each file's top_n cohort scores -> (mu, sigma), both of length files.

    file_emb: files x D; cohort_emb: speakers x D. Files are processed `chunk` at a time so
    the files x speakers score matrix never has to exist whole.
    """
    file_emb = torch.as_tensor(file_emb).float()
    cohort_emb = torch.as_tensor(cohort_emb).float()
    if cohort_emb.ndim != 2 or cohort_emb.shape[0] == 0:
        raise ValueError(f"the AS-norm cohort must be a non-empty speakers x D matrix, got shape "
                         f"{tuple(cohort_emb.shape)}")
    if file_emb.shape[-1] != cohort_emb.shape[-1]:
        raise ValueError(f"file embeddings have {file_emb.shape[-1]} dimensions, the cohort "
                         f"{cohort_emb.shape[-1]}")
    if top_n < 1:
        raise ValueError(f"AS-norm top_n must be at least 1, got {top_n}")
    if top_n > cohort_emb.shape[0]:
        log.warning("AS-norm top_n %d is more than the %d speakers of the cohort; using %d",
                    top_n, cohort_emb.shape[0], cohort_emb.shape[0])
        top_n = cohort_emb.shape[0]
    means, stds = [], []
    for block in file_emb.split(chunk):
        top = torch.topk(block @ cohort_emb.T, top_n, dim=1, sorted=False).values
        means.append(top.mean(dim=1))
        stds.append(top.std(dim=1, correction=0))
    return torch.cat(means), torch.cat(stds).clamp_min(MIN_SIGMA)


def apply_as_norm(scores, pairs, mu, sigma):
    """AS-normalised scores of trials `pairs` (trials x 2 file indices) from cohort_stats."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    mu, sigma = mu.double(), sigma.double()
    enrol, test = pairs[:, 0], pairs[:, 1]
    return 0.5 * ((scores - mu[enrol]) / sigma[enrol] + (scores - mu[test]) / sigma[test])


def as_norm(scores, pairs, file_emb, cohort_emb, top_n):
    """AS-norm in one call: cohort statistics of every file, then each trial normalised.

    scores: raw trial scores (trials); pairs: trials x 2 indices into file_emb's rows.
    Returns a float64 tensor of normalised scores. When several trial lists share files,
    call cohort_stats once and apply_as_norm per list instead.
    """
    mu, sigma = cohort_stats(file_emb, cohort_emb, top_n)
    return apply_as_norm(scores, pairs, mu, sigma)
