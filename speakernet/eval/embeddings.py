"""Embedding files through any `extract(files, lengths, root) -> files x crops x D` callable:
a chunk at a time, shared across distributed ranks, and exported to .npz for other back-ends."""
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from speakernet.core.train_list import read_train_list
from speakernet.core.audio import ChangedAudio, NonFiniteAudio
from speakernet.eval.eval_crops import locate_bad_audio
from speakernet.core.errors import UserError
from speakernet.core.atomic import atomic_file, make_folders
from speakernet.eval.result_files import unique_path
from speakernet.eval.trial_sets import load_trial_lists

log = logging.getLogger("evaluation")

# Files embedded per call of `extract`: bounds memory (4096 x 10 crops x 512 floats = 84 MB)
# on VoxCeleb1-E/H, whose 145k files would otherwise need 3 GB of crop embeddings at once.
EXTRACT_CHUNK = 4096


# ---------------------------------------------------------------------------- embeddings

def file_embeddings(crops, normalize=True):
    """files x crops x D -> files x D: the mean of the unit crop embeddings (normalize=True,
    so that a dot product of two rows is the mean crop-pair cosine of score_trials), or the
    plain crop mean."""
    crops = torch.as_tensor(crops).float()
    return (F.normalize(crops, dim=-1) if normalize else crops).mean(dim=1)


def embed_files(extract, files, lengths, root, normalize=True, keep_crops=False,
                chunk=None, origins=None):
    """Call extract(files, lengths, root) a chunk of files at a time (EXTRACT_CHUNK unless
    given) -> (files x D file embeddings, files x crops x D crops or None). Crops are only kept
    when asked for. A file with NaN/Inf samples, or shorter than its cached length, stops it,
    named with its list line from `origins` when given."""
    chunk = chunk or EXTRACT_CHUNK
    embeddings, kept = [], []
    for start in range(0, len(files), chunk):
        try:
            crops = extract(files[start:start + chunk], lengths[start:start + chunk], root)
        except (NonFiniteAudio, ChangedAudio) as err:
            raise locate_bad_audio(err, root, files, origins) from None
        embeddings.append(file_embeddings(crops, normalize))
        if keep_crops:
            kept.append(torch.as_tensor(crops).float())
    return torch.cat(embeddings), torch.cat(kept) if keep_crops else None


def shared_extract(extract):
    """`extract` split across the ranks of an initialised torch.distributed group: each rank
    embeds a disjoint share of the files (files[rank::world]) and every rank receives all of
    them, in order. Every rank must call it with the same files. Without a process group (or
    with one rank) it is `extract` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extract

    def run(files, lengths, root):
        rank, world = dist.get_rank(), dist.get_world_size()
        share = (len(files) - rank + world - 1) // world
        # A rank without files still needs the crop tensor's shape for the collective:
        # it embeds the first file and sends zeros.
        mine = torch.as_tensor(extract(files[rank::world] if share else files[:1],
                                       lengths[rank::world] if share else lengths[:1], root)).float()
        rows = -(-len(files) // world)
        padded = mine.new_zeros((rows, *mine.shape[1:]))
        padded[:share] = mine[:share]
        # NCCL gathers CUDA tensors only (init_distributed sets each rank's device).
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
        parts = [torch.empty_like(padded, device=device) for _ in range(world)]
        dist.all_gather(parts, padded.to(device))
        # Row j of rank r is file j * world + r: interleave, and the padding falls at the end.
        return torch.stack(parts, dim=1).flatten(0, 1)[:len(files)].cpu()

    return run


def cohort_embeddings(extract, cohort, chunk=None):
    """Speaker means of the cohort's file embeddings -> speakers x D tensor."""
    # Cohort paths already include the training root, so the root passed on is empty.
    emb, _ = embed_files(extract, cohort.files, cohort.lengths, "", normalize=True, chunk=chunk)
    speaker = torch.as_tensor(cohort.speaker)
    sums = torch.zeros(len(cohort.speakers), emb.shape[1]).index_add_(0, speaker, emb)
    counts = torch.bincount(speaker, minlength=len(cohort.speakers)).clamp_min(1)
    return sums / counts.unsqueeze(1)


# ---------------------------------------------------------------------------- export

@dataclass
class FileSet:
    """Files to embed for --extract, validated before any extraction."""
    files: list
    lengths: np.ndarray
    root: str
    names: list                         # as written in the list
    speakers: list = field(default=None)   # one per file, when the list names speakers
    origins: list = field(default=None)    # 'list:line' of each file, for messages


def files_to_export(options):
    """--extract_list (training-list format under --train_path) or every file of the
    --test_list lists -> FileSet. Raises ListError for bad files and UserError when --extract
    names an existing file (checked before any extraction)."""
    if Path(options.extract).exists():
        raise UserError(f"--extract {options.extract} exists; choose another file name")
    check_writable(Path(options.extract).parent, f"--extract {options.extract}")
    if not options.extract_list:
        trial_set = load_trial_lists(options.test_list, options.test_path,
                                     getattr(options, "allow_outside_paths", False),
                                     getattr(options, "recheck_audio", False))
        return FileSet(trial_set.files, trial_set.lengths, options.test_path, list(trial_set.files),
                       origins=trial_set.origins)
    train = read_train_list(options.extract_list, options.train_path, need_labels=False,
                            allow_outside=getattr(options, "allow_outside_paths", False),
                            recheck=getattr(options, "recheck_audio", False))
    root = str(Path(options.train_path))
    names = [f[len(root) + 1:] if f.startswith(root + os.sep) else f for f in train.files]
    speakers = [train.speakers[i] for i in train.labels] if train.speakers else None
    return FileSet(train.files, train.lengths, "", names, speakers,
                   origins=[train.origin(i) for i in range(len(train.files))])


def check_writable(folder, what):
    """Create `folder` if needed and prove a file can be written there, before any long job."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        make_folders(folder)
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write {what} in {folder}: {err.strerror or err} "
                        f"(choose a writable folder)") from None


def export_embeddings(path, names, crops, speakers=None, keep_crops=False, normalize=True):
    """Write one .npz: 'names' (files), 'embeddings' (files x D, file_embeddings of the crops),
    'crops' (files x crops x D) when keep_crops, 'speakers' when given -> the path written.
    Written atomically; an existing file is never overwritten (a numeric suffix is added)."""
    crops = torch.as_tensor(crops).float()
    return _write_npz(path, names, file_embeddings(crops, normalize), crops if keep_crops else None,
                      speakers)


def extract_to_npz(path, extract, file_set, keep_crops=False, normalize=True):
    """Embed a FileSet a chunk at a time and write it like export_embeddings -> the path."""
    embeddings, crops = embed_files(extract, file_set.files, file_set.lengths, file_set.root,
                                    normalize=normalize, keep_crops=keep_crops, origins=file_set.origins)
    path = _write_npz(path, file_set.names, embeddings, crops, file_set.speakers)
    log.info("wrote %d embeddings (%d dimensions) to %s", len(file_set.names), embeddings.shape[1], path)
    return path


def _write_npz(path, names, embeddings, crops, speakers):
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names for {len(embeddings)} embeddings")
    arrays = {"names": np.array([str(n) for n in names]), "embeddings": embeddings.numpy()}
    if crops is not None:
        arrays["crops"] = crops.numpy()
    if speakers is not None:
        arrays["speakers"] = np.array([str(s) for s in speakers])
    path = unique_path(path)
    try:
        make_folders(path.parent)
        with atomic_file(path) as handle:        # a file object: numpy adds no second .npz suffix
            np.savez(handle, **arrays)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err} (free space or choose another "
                        f"place; nothing was written)") from None
    return path
