"""Data the objectives' curricula ask for, computed on the data side (an objective sees tensors
only): the k-means clustering of the training list for the SSL data curriculum (Heo et al.
2023, sec. 6.3; see loss._ssl_curricula.py for what is clustered and why).

The trainer hands an objective's `data_request()` to `answer(request, train_list, options)` and
the result back through `receive_data`. Features are computed once and cached in
save_path/cl_kmeans_features.npz.
"""
import logging
from pathlib import Path

import numpy as np

from speakernet.core.errors import OptionError
from speakernet.core.atomic import atomic_file
from speakernet.core.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

KMEANS_FEATURE_MELS = 40
KMEANS_CACHE = "cl_kmeans_features.npz"


def answer(request, train_list, options):
    """What `request` (an objective's data_request()) asks of the training list."""
    if request.get("kind") != "kmeans_clusters":
        raise ValueError(f"unknown data request {request!r}")
    count = len(train_list.files)
    if request["clusters"] > count:
        raise OptionError(f"--cl_kmeans {request['clusters']} is more than the {count} utterances")
    features = kmeans_features(train_list, request["embeddings"], request["frames"],
                               Path(options.save_path) / KMEANS_CACHE, options.nDataLoaderThread)
    return kmeans_labels(features, request["clusters"], request["seed"])


def kmeans_features(train, embeddings, frames, cache, workers=0):
    """One feature row per training utterance: the given embeddings, or cached log-mel statistics."""
    if embeddings:
        return load_embeddings(embeddings, train)
    if cache.is_file():
        with np.load(cache) as saved:
            if list(saved["files"]) == list(train.files) and int(saved["frames"]) == frames:
                return saved["features"]
        log.info("%s is for another list or crop length; recomputing", cache)
    features = logmel_statistics(train.files, train.lengths, frames, workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as handle:
        np.savez(handle, files=np.array(train.files), frames=frames, features=features)
    return features


def load_embeddings(path, train):
    """Rows of an .npz in training-list order: 'embeddings' (files x D) and, when present,
    'names' (trainSpeakerNet.py --extract writes them) or 'files' to check the order against.
    Any 'speakers' array in the file is never read: the curriculum stays label-free."""
    try:
        with np.load(path) as saved:
            embeddings = np.asarray(saved["embeddings"], dtype=np.float32)
            key = next((k for k in ("names", "files") if k in saved.files), None)
            names = [str(n) for n in saved[key]] if key else None
    except (OSError, KeyError, ValueError) as err:
        raise OptionError(f"--cl_kmeans_embeddings {path}: not an .npz with an 'embeddings' "
                          f"array ({err})") from None
    if embeddings.ndim != 2 or len(embeddings) != len(train.files):
        raise OptionError(f"--cl_kmeans_embeddings {path}: {embeddings.shape[0]} rows for a training "
                          f"list of {len(train.files)} files; export them with --extract_list "
                          f"set to the training list")
    if names is not None and not all(str(t).endswith(n) for n, t in zip(names, train.files)):
        raise OptionError(f"--cl_kmeans_embeddings {path}: its '{key}' are not the training list's "
                          f"files in list order")
    return embeddings


def kmeans_labels(features, k, seed):
    """Cluster index per row: k-means on standardised features (mini-batch k-means when large)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    if len(x) > 50000:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=3)
    return model.fit_predict(x).astype(np.int64)


class CentralCrops:
    """Dataset of the central `length` samples of each file (k-means features)."""

    def __init__(self, files, lengths, length):
        self.files, self.lengths, self.length = files, lengths, length

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch
        from speakernet.core.audio import read_crop
        total = int(self.lengths[i])
        start = max(total - self.length, 0) // 2
        return torch.from_numpy(read_crop(self.files[i], total, start, self.length))


def logmel_statistics(files, lengths, frames, workers=0, batch=64):
    """Per file: mean and std over time of 40 log-mels of its central `frames` frames."""
    import torch
    import torchaudio
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from speakernet.core.audio import crop_samples

    melspec = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160,
        window_fn=torch.hamming_window, n_mels=KMEANS_FEATURE_MELS)
    out = []
    loader = DataLoader(CentralCrops(files, lengths, crop_samples(frames)), batch_size=batch,
                        num_workers=workers)
    with torch.no_grad():
        for wav in tqdm(loader, desc="k-means features", unit="batch", leave=False):
            logmel = (melspec(wav.float()) + 1e-6).log()
            out.append(torch.cat([logmel.mean(-1), logmel.std(-1)], dim=1).numpy())
    log.info("k-means curriculum: log-mel statistics of %d files", len(files))
    return np.concatenate(out)
