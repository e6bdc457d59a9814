"""Curricula for self-supervised objectives (Heo et al. 2023, "Curriculum learning for
self-supervised speaker verification", sec. 4 and 6.3); shared by cel, moco and dino.

Each SSL objective declares these options (`add_arguments`) and forwards the protocol hooks
`utterance_subset(epoch, count)` and `augment_fraction(epoch)` to a `Curricula` object.
Everything is a pure function of the epoch (epochs start at 1) and the seed, so a resumed
run uses exactly the data and augmentation an uninterrupted one did.

Schedules are step functions written as 'EPOCH:VALUE' pairs: the value holds from that epoch
until the next pair. The first pair must start at epoch 1. In YAML, quote the pairs
(cl_data: ["1:0.5", "17:0.75", "33:1"]): unquoted, YAML 1.1 reads 1:0.5 as a base-60 number.

Data curriculum (CL_D, sec. 4.1): epoch e trains on a portion p(e) of the training list.
  - random (the paper's main method): a fixed permutation of the list, seeded by --seed;
    the first round(p * count) entries. Portions only grow in the paper, so each epoch's
    subset contains the previous one.
  - k-means (sec. 6.3, --cl_kmeans K): the list is grouped into K clusters once, and epoch e
    uses the first round(p * K) clusters of a fixed seeded order of clusters (at least one),
    i.e. a share p of the *clusters*; the share of utterances follows on average only.
    What is clustered: the paper does not say. By default, cheap label-free features computed
    here from the audio, without the model: mean and standard deviation over time of 40
    log-mel energies of the central --cl_kmeans_frames frames of each file, standardised per
    dimension (the spectral envelope carries much of a speaker's identity; on the synthetic
    demo corpus the same statistic is data_prep's mean-log-mel baseline). They are computed
    the first time a subset is needed (one partial read per file, about 10 ms per file on a
    busy CPU core: a few hours for VoxCeleb2's million files, once) and cached in
    save_path/cl_kmeans_features.npz. Alternatively
    --cl_kmeans_embeddings FILE.npz clusters precomputed embeddings instead, one row per
    training-list line in list order, e.g. those of a model trained without the curriculum,
    exported with
        trainSpeakerNet.py --config C --initial_model M --extract FILE.npz --extract_list L
    ('names' is checked against the list; a 'speakers' array is never read). The objective
    reads the list itself from --train_list/--train_path with the trainer's parser, so
    indices agree.
Augmentation curriculum (CL_A, sec. 4.2): epoch e augments a share f(e) of the crops (needs
  --augment); without --cl_aug the share is --aug_fraction, as without an SSL objective.
  Note: the sampler draws this per crop (each view independently), the paper speaks of the
  share of utterances in a mini-batch; the expected share is the same.
"""
import logging
import numpy as np

from speakernet.core.errors import OptionError

log = logging.getLogger(__name__)



def add_arguments(parser):
    parser.add_argument("--cl_data", type=str, nargs="*", default=[], metavar="EPOCH:PORTION",
                        help="data curriculum (Heo et al. sec. 4.1): share of the training list used "
                             "from each epoch on, e.g. 1:0.5 17:0.75 33:1 (CL_D2); empty = all data")
    parser.add_argument("--cl_aug", type=str, nargs="*", default=[], metavar="EPOCH:FRACTION",
                        help="augmentation curriculum (Heo et al. sec. 4.2): share of crops augmented "
                             "from each epoch on, e.g. 1:0.5 17:1 (needs --augment); empty = "
                             "--aug_fraction throughout")
    parser.add_argument("--cl_kmeans", type=int, default=0,
                        help="data curriculum by k-means clusters (Heo et al. sec. 6.3): group the "
                             "list into this many clusters and grow the data by clusters; 0 = grow "
                             "by a random permutation of utterances")
    parser.add_argument("--cl_kmeans_embeddings", type=str, default="",
                        help="k-means on these embeddings (.npz with 'embeddings', one row per "
                             "train_list line) instead of log-mel statistics computed from the audio")
    parser.add_argument("--cl_kmeans_frames", type=int, default=300,
                        help="k-means features: frames read from the middle of each file")


def parse_schedule(pairs, option, low, high, low_open=False):
    """['1:0.5', '17:0.75'] -> [(1, 0.5), (17, 0.75)], validated; [] stays []."""
    if isinstance(pairs, str):
        pairs = pairs.replace(",", " ").split()
    schedule = []
    for item in pairs or []:
        epoch, sep, value = str(item).partition(":")
        try:
            epoch, value = int(epoch), float(value)
        except ValueError:
            epoch = None
        bad_value = epoch is None or not (value > low if low_open else value >= low) or value > high
        if not sep or bad_value:
            bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            # YAML 1.1 reads an unquoted 1:0.5 as the base-60 number 60.5.
            hint = "; in YAML quote each pair: [\"1:0.5\", \"17:0.75\"]" if not sep else ""
            raise OptionError(f"--{option}: '{item}' is not 'EPOCH:VALUE' with a value in {bound} "
                              f"(e.g. 1:0.5 17:0.75 33:1){hint}")
        schedule.append((epoch, value))
    if schedule:
        epochs = [e for e, _ in schedule]
        if epochs[0] != 1 or epochs != sorted(set(epochs)):
            raise OptionError(f"--{option} {' '.join(map(str, pairs))}: epochs must increase "
                              f"and the first pair must be for epoch 1")
    return schedule


def value_at(schedule, epoch, default):
    """The value of the last pair starting at or before `epoch` (`default` without pairs)."""
    value = default
    for start, v in schedule:
        if start <= epoch:
            value = v
    return value


class Curricula:
    def __init__(self, cl_data=(), cl_aug=(), cl_kmeans=0, cl_kmeans_embeddings="",
                 cl_kmeans_frames=300, aug_fraction=1.0, augment=False, seed=10, **kwargs):
        self.data = parse_schedule(cl_data, "cl_data", 0.0, 1.0, low_open=True)
        self.aug = parse_schedule(cl_aug, "cl_aug", 0.0, 1.0)
        if cl_kmeans < 0:
            raise OptionError(f"--cl_kmeans must be 0 (random growth) or a number of clusters, got {cl_kmeans}")
        if cl_kmeans and not self.data:
            raise OptionError("--cl_kmeans needs a data curriculum: give --cl_data (e.g. 1:0.5 17:0.75 33:1)")
        if cl_kmeans_frames < 1:
            raise OptionError("--cl_kmeans_frames must be at least 1")
        if self.aug and not augment:
            log.warning("--cl_aug has no effect without --augment")
        self.default_fraction = aug_fraction
        self.kmeans = cl_kmeans
        self.kmeans_embeddings = cl_kmeans_embeddings
        self.kmeans_frames = cl_kmeans_frames
        self.seed = seed
        self._order = {}              # count -> permutation of utterances
        self._clusters = None         # cluster index per utterance, clusters in growth order

    # ------------------------------------------------------------------ schedules
    def portion(self, epoch):
        return value_at(self.data, epoch, 1.0)

    def augment_fraction(self, epoch):
        return value_at(self.aug, epoch, self.default_fraction)

    def describe(self, epoch):
        parts = []
        if self.data:
            how = f"{self.kmeans} k-means clusters" if self.kmeans else "the training list"
            parts.append(f"data curriculum: {100 * self.portion(epoch):.0f}% of {how}")
        if self.aug:
            parts.append(f"augmentation curriculum: {100 * self.augment_fraction(epoch):.0f}% of crops")
        return "; ".join(parts)

    # ------------------------------------------------------------------ data subsets
    def utterance_subset(self, epoch, count):
        portion = self.portion(epoch)
        if not self.data or portion >= 1.0:
            return None
        if self.kmeans:
            clusters = self.cluster_order(count)
            chosen = max(1, int(round(portion * self.kmeans)))
            return np.flatnonzero(clusters < chosen)
        if count not in self._order:
            self._order[count] = np.random.default_rng([self.seed, 8117]).permutation(count)
        return self._order[count][:max(1, int(round(portion * count)))]

    def data_request(self):
        """The k-means clustering this curriculum needs, computed by the data side."""
        if not self.kmeans:
            return None
        return {"kind": "kmeans_clusters", "clusters": self.kmeans, "embeddings": self.kmeans_embeddings,
                "frames": self.kmeans_frames, "seed": self.seed}

    def receive_data(self, labels):
        """Cluster index per training utterance -> cluster rank (0 = the first to be used)."""
        labels = np.asarray(labels, dtype=np.int64)
        rank = np.empty(self.kmeans, dtype=np.int64)
        rank[np.random.default_rng([self.seed, 6271]).permutation(self.kmeans)] = np.arange(self.kmeans)
        self._clusters = rank[labels]
        sizes = np.bincount(self._clusters, minlength=self.kmeans)
        log.info("k-means curriculum: %d clusters of %d-%d utterances (median %d)",
                 self.kmeans, sizes.min(), sizes.max(), int(np.median(sizes)))

    def cluster_order(self, count):
        """Cluster rank per utterance, as received from the data side."""
        if self._clusters is None or len(self._clusters) != count:
            raise RuntimeError(f"k-means curriculum: no clusters for {count} utterances; the trainer "
                               f"answers data_request() before training")
        return self._clusters


class CurriculumHooks:
    """Mixin for SSL objectives: the contract's curriculum hooks, forwarded to `self.curricula`
    (a Curricula built from the options), and a log line when an epoch starts."""

    def utterance_subset(self, epoch, count):
        return self.curricula.utterance_subset(epoch, count)

    def augment_fraction(self, epoch):
        return self.curricula.augment_fraction(epoch)

    def data_request(self):
        return self.curricula.data_request()

    def receive_data(self, answer):
        self.curricula.receive_data(answer)

    def log_curricula(self, epoch):
        text = self.curricula.describe(epoch)
        if text:
            log.info("epoch %d: %s", epoch, text)
