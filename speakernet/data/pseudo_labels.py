"""Pseudo-speaker labels from embeddings: the options of the pseudo-label rounds, clustering
with a confidence filter, the voxceleb_trainer-format list they become, and the diagnostics
against true labels (never used for training).

A round (speakernet/tools/pseudo_rounds.py runs them) embeds every utterance of the unlabelled
training list with the newest model, clusters the embeddings (spherical k-means,
speakernet/data/clustering.py, or spectral clustering, speakernet/data/spectral.py) into K
pseudo-speakers, keeps the members of each cluster closest to it, and trains a supervised
objective on the list of kept utterances. This is the second stage of the iterative
self-supervised pipelines (Cai et al. 2021, "An iterative framework for
self-supervised deep speaker representation learning"; Tao et al. 2022, "Self-supervised
speaker recognition with loss-gated learning"; Han et al. 2023, cluster-aware DINO).

Label-noise guard: within each cluster, the --pseudo_keep share of its members with the
largest margin (cosine to their centroid minus cosine to the next-closest centroid) is kept;
clusters left with fewer than 2 members are dropped. Cai et al. 2021 keep the members closest
to their centroid in the same spirit; the share is our choice (0.8), the sources give none that
transfers to another corpus size.
"""
import logging
import shlex

import numpy as np

from speakernet.data import clustering, spectral
from speakernet.core.atomic import write_text
from speakernet.core.errors import OptionError
from speakernet.core.option_types import option_argv, resumable

log = logging.getLogger("pseudo_labels")


def add_arguments(parser):
    g = parser.add_argument_group("pseudo-label rounds (after self-supervised training)")
    resumable(g.add_argument("--pseudo_rounds", type=int, default=0,
                             help="rounds of cluster -> pseudo-labelled list -> supervised training after "
                                  "the first stage (0: plain training)"))
    resumable(g.add_argument("--pseudo_clusters", type=int, default=0,
                             help="K, the pseudo-speakers per round; 0 chooses it from --pseudo_k_candidates "
                                  "by the silhouette score"))
    resumable(g.add_argument("--pseudo_k_candidates", type=int, nargs="+", default=[],
                             help="K values to choose from when --pseudo_clusters is 0 (default: 8 values "
                                  "from utterances/100 to utterances/5 on a log scale)"))
    # Spectral clustering (speakernet/data/spectral.py) gave purer clusters on the demo corpus
    # (0.60 against 0.49 with K = 200) but does not scale to VoxCeleb2's million utterances.
    resumable(g.add_argument("--pseudo_method", choices=("kmeans", "spectral"), default="kmeans",
                             help="how utterances are clustered: spherical k-means (any size) or "
                                  "spectral clustering on a 10-nearest-neighbour graph (up to 100,000 "
                                  "utterances)"))
    resumable(g.add_argument("--pseudo_keep", type=float, default=0.8,
                             help="share of each cluster kept, those with the largest margin to the next "
                                  "cluster (the label-noise guard); 1 keeps all"))
    resumable(g.add_argument("--pseudo_round_options", type=str, default="",
                             help="options of each round's training on top of the run's, as name=value "
                                  "(more values of a list option follow with spaces; true/false for "
                                  "flags), e.g. 'trainfunc=aamsoftmax nPerSpeaker=1 max_epoch=4'"))
    resumable(g.add_argument("--pseudo_from", type=str, default="",
                             help="a checkpoint to cluster with in round 1 instead of training a first stage"))
    # A model trained on its own clusters confirms them: on the demo a second round from the
    # first round's weights had purer clusters (0.56 against 0.40) but a higher EER.
    resumable(g.add_argument("--pseudo_start", choices=("previous", "first"), default="previous",
                             help="where each round's training starts: the model that clustered "
                                  "(previous) or the first stage's (first: every round retrains "
                                  "from it on the newest clusters)"))
    # Crops of one length batch well; whole files of many lengths run several times slower on a
    # CPU (4,800 demo files: 6 minutes whole, about 1 minute as two 2 s crops).
    resumable(g.add_argument("--pseudo_frames", type=int, default=200,
                             help="frames per crop to embed utterances for clustering (0: whole files)"))
    resumable(g.add_argument("--pseudo_crops", type=int, default=2,
                             help="crops per utterance, evenly spaced from its start to its end, averaged"))


def check_options(options, utterances):
    """Refuse settings that cannot work with a list of `utterances`, before any training."""
    if options.pseudo_rounds < 0:
        raise OptionError(f"--pseudo_rounds must be 0 or more, got {options.pseudo_rounds}")
    if not 0.0 < options.pseudo_keep <= 1.0:
        raise OptionError(f"--pseudo_keep must lie in (0, 1], got {options.pseudo_keep:g}")
    if options.pseudo_frames < 0 or options.pseudo_crops < 1:
        raise OptionError("--pseudo_frames must be 0 or more and --pseudo_crops at least 1")
    for k in [options.pseudo_clusters] + list(options.pseudo_k_candidates):
        if k and not 2 <= k <= utterances // 2:
            raise OptionError(f"K={k} pseudo-speakers cannot be formed from the {utterances} "
                              f"utterances of {options.train_list} (each needs 2 or more); set "
                              f"--pseudo_clusters / --pseudo_k_candidates between 2 and {utterances // 2}")
    if options.pseudo_method == "spectral" and utterances > spectral.SPECTRAL_LIMIT:
        raise OptionError(f"--pseudo_method spectral handles up to {spectral.SPECTRAL_LIMIT:,} utterances "
                          f"and {options.train_list} has {utterances:,}; use --pseudo_method kmeans")
    if options.distributed:
        raise OptionError("--pseudo_rounds runs on one process; drop --distributed (or run each "
                          "round's training as its own distributed run)")


def round_argv(text):
    """'name=value more ...' -> ['--name', 'value', 'more', ...] ('flag=true' -> '--flag')."""
    argv = []
    for token in shlex.split(text):
        name, equals, value = token.partition("=")
        if not equals:
            if not argv:
                raise OptionError(f"--pseudo_round_options {text!r}: starts with {token!r}; write "
                                  f"each option as name=value, e.g. 'trainfunc=aamsoftmax max_epoch=4'")
            argv.append(token)                  # one more value of a list option
        else:
            argv += option_argv(name, value)
    return argv


def default_candidates(utterances):
    """8 values of K on a log scale from utterances/100 to utterances/5 (at least 2)."""
    low, high = max(2, utterances // 100), max(2, utterances // 5)
    return sorted({int(round(v)) for v in np.geomspace(low, high, 8)})


def choose_clusters(embeddings, options, seed):
    """K (given, or chosen by the silhouette) -> (K, {candidate: score} or {})."""
    if options.pseudo_clusters:
        return options.pseudo_clusters, {}
    candidates = list(options.pseudo_k_candidates) or default_candidates(len(embeddings))
    best, scores = clustering.choose_k(embeddings, candidates, seed=seed)
    log.info("K chosen by silhouette: %d (%s)", best,
             ", ".join(f"K={k}: {s:.3f}" for k, s in sorted(scores.items())))
    return best, scores


def pseudo_labels(embeddings, k, keep, seed, method="kmeans"):
    """Cluster (`method`: kmeans or spectral) and filter -> (labels per utterance, -1 where
    dropped; the Clusters)."""
    if method == "spectral":
        clusters = spectral.spectral_clusters(embeddings, k, seed=seed)
    else:
        clusters = clustering.spherical_kmeans(embeddings, k, seed=seed)
    kept = clustering.keep_confident(clusters, keep, min_size=2)
    labels = np.full(len(kept), -1, dtype=np.int64)
    labels[kept] = clustering.relabel_by_size(np.asarray(clusters.assignment)[kept])
    return labels, clusters


def write_list(path, paths, labels):
    """A voxceleb_trainer-format list 'pseudoNNNNN path' of the kept utterances (label >= 0)."""
    width = max(5, len(str(int(labels.max()))))
    lines = [f"pseudo{label:0{width}d} {p}" for p, label in zip(paths, labels) if label >= 0]
    return write_text(path, "\n".join(lines) + "\n")


def diagnostics(labels, clusters, truth):
    """Purity and NMI against the true speakers: of every utterance's cluster, and of the kept."""
    if truth is None:
        return {}
    truth = np.asarray(truth)
    assignment = np.asarray(clusters.assignment)
    kept = labels >= 0
    return {"purity_all": clustering.purity(assignment, truth),
            "nmi_all": clustering.normalized_mutual_info(assignment, truth),
            "purity_kept": clustering.purity(labels[kept], truth[kept]),
            "nmi_kept": clustering.normalized_mutual_info(labels[kept], truth[kept]),
            "true_speakers": int(len(np.unique(truth)))}


def describe(record):
    """One log line of a round's clustering."""
    text = (f"{record['clusters']} clusters of {record['utterances']} utterances; kept "
            f"{record['kept']} in {record['kept_clusters']} clusters")
    if "purity_all" in record:
        text += (f"; against the true speakers (not used for training): purity "
                 f"{record['purity_all']:.3f} / NMI {record['nmi_all']:.3f}, kept "
                 f"{record['purity_kept']:.3f} / {record['nmi_kept']:.3f}")
    return text


def finite_or_fail(embeddings, model):
    """Embeddings with NaN/Inf mean the model diverged: say which model."""
    bad = int((~np.isfinite(np.asarray(embeddings)).all(axis=1)).sum())
    if bad:
        raise FloatingPointError(f"{model} gives non-finite embeddings for {bad} utterances: it "
                                 f"diverged; lower --lr and run the stage again")
