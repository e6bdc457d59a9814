"""Experiment tracking: what the progress bar and metrics.jsonl hold, sent to a tracker as the
run goes (--tensorboard: TensorBoard files under save_path/tensorboard).

`Tracker` decides what is logged, under which name and at which step; it is also the tracker of
a run that tracks nothing (the default, and every rank but 0). A tracker for another service
subclasses it and implements write_scalars, write_image and write_embeddings.

Every figure is logged at the run's optimizer step (Trainer.step), the one x axis of all charts:
the per-step figures every STEP_INTERVAL steps, each metrics.jsonl record at the step its epoch
ended (its "epoch" is logged too, as train/epoch). One axis is what lets a resumed run replace
what a stopped run logged after its checkpoint: the writer's purge_step (the checkpoint's step
+ 1) makes TensorBoard's readers drop those events, and TensorBoard's fast loader also drops,
chart by chart, the events at or after a step logged again.

    step/loss, step/metric       mean over the steps since the previous logged step
    step/lr, step/data_wait,     as the progress bar shows them (data wait as a share of the
    step/utt_per_s               time, both since the epoch began)
    train/<key>                  a metrics.jsonl record's training figures (loss, metric, lr, ...)
    val_eer/<list>, ...          its validation figures, named as in metrics.jsonl
    det/<list>                   each evaluation's DET curve, as an image
and, for the projector, the embeddings of up to MAX_PROJECTED_FILES test files of the latest
evaluation, labelled with their speaker folder.
"""
import importlib.util
import io
import logging
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from speakernet.core.atomic import make_folders, write_text
from speakernet.eval.embeddings import check_writable, file_embeddings
from speakernet.core.errors import OptionError

log = logging.getLogger(__name__)

FOLDER = "tensorboard"               # under save_path
STEP_INTERVAL = 20                   # optimizer steps between per-step figures (2.5 M steps of a
#                                      VoxCeleb2 run would otherwise write 0.5 GB of events)
FLUSH_SECONDS = 120                  # events reach the file at least this often (and every epoch)
MAX_PROJECTED_FILES = 2000           # a TSV of 2000 x 512 numbers is about 10 MB


class Tracker:
    """The tracking interface; as it is, it tracks nothing."""
    enabled = False

    def __init__(self):
        self._window = (None, 0, 0.0, 0.0)    # (epoch, steps, loss sum, metric sum) when last logged

    # ------------------------------------------------------------------ what the run calls

    def log_step(self, step, epoch, totals, rates):
        """After optimizer step `step` of `epoch`: `totals` are the epoch's running sums
        (Trainer.train_epoch), `rates` {name: value} as the progress bar shows them."""
        if not self.enabled or step % STEP_INTERVAL:
            return
        last_epoch, count, loss, metric = self._window
        if last_epoch != epoch:               # the epoch's sums started again from 0
            count, loss, metric = 0, 0.0, 0.0
        steps = max(totals["count"] - count, 1)
        values = {"step/loss": (totals["loss"] - loss) / steps,
                  "step/metric": (totals["metric"] - metric) / steps,
                  **{f"step/{name}": value for name, value in rates.items()}}
        self._window = (epoch, totals["count"], totals["loss"], totals["metric"])
        self.write_scalars(values, step)

    def log_record(self, record, step):
        """One metrics.jsonl record, at the step its epoch ended."""
        if self.enabled:
            self.write_scalars(record_scalars(record), step)

    def log_evaluation(self, report, step, projected=None):
        """An EvaluationReport's DET curves, and the ProjectedFiles it embedded."""
        if not self.enabled:
            return
        for name, result in report.lists.items():
            det = result.outputs.get("det_png")
            if det:
                self.write_image(f"det/{name}", det, step)
        if projected is not None:
            names, matrix = projected.take()
            if names:
                self.write_embeddings(f"test files ({report.tag})", matrix, names, speakers_of(names))

    def flush(self):
        """Make everything logged so far readable (after each epoch: never per step)."""

    def close(self):
        self.flush()

    # ------------------------------------------------------------------ what a tracker writes

    def write_scalars(self, values, step):
        """{tag: number} at `step`."""

    def write_image(self, tag, png_path, step):
        """The PNG file `png_path` as image `tag` at `step`."""

    def write_embeddings(self, name, matrix, names, speakers):
        """files x D `matrix` of the files `names` (speakers: one label per file, or None),
        replacing the previous set."""


def record_scalars(record):
    """{tag: value} of a metrics.jsonl record's numbers: per-list keys ('val_eer/<list>') as
    they are, the others as train/<key>. Lists (the intervals) and missing values are left out."""
    return {(key if "/" in key else f"train/{key}"): float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def speakers_of(names):
    """The speaker of each test file by the VoxCeleb convention, its first folder
    (id10270/x6uYqmx31kE/00001.wav); None unless every name has a folder."""
    parts = [PurePosixPath(name).parts for name in names]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    return [p[0] for p in parts]


class ProjectedFiles:
    """File embeddings of a fixed subset of the test files, taken from the evaluation's own
    extraction (nothing is embedded twice): at most `limit` files, evenly spread over the
    sorted names so that every speaker folder is represented, the same files at every
    evaluation."""

    def __init__(self, files, root, normalize=True, limit=MAX_PROJECTED_FILES):
        names = sorted(set(files))
        picks = np.unique(np.linspace(0, len(names) - 1, min(limit, len(names))).round().astype(int))
        self.names = [names[i] for i in picks] if names else []
        self._wanted = set(self.names)
        self.root = str(root)
        self.normalize = normalize
        self._rows = {}

    def watch(self, extract):
        """`extract(files, lengths, root)` that also keeps the wanted files' embeddings (the
        AS-norm cohort, embedded under another root, is not kept)."""
        def run(files, lengths, root):
            crops = extract(files, lengths, root)
            if str(root) == self.root:
                index = [i for i, name in enumerate(files) if name in self._wanted]
                if index:
                    rows = file_embeddings(torch.as_tensor(crops)[index], self.normalize)
                    self._rows.update(zip((files[i] for i in index), rows.numpy()))
            return crops
        return run

    def take(self):
        """(names, files x D array) of the wanted files embedded since the last take."""
        names = [name for name in self.names if name in self._rows]
        matrix = np.stack([self._rows[name] for name in names]) if names else None
        self._rows = {}
        return names, matrix


class TensorBoardTracker(Tracker):
    """TensorBoard event files, and the projector's files, in `folder`."""
    enabled = True

    def __init__(self, folder, purge_step):
        super().__init__()
        # Imported here: the tensorboard package is needed only when tracking.
        from torch.utils.tensorboard import SummaryWriter
        self.folder = Path(folder)
        self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=FLUSH_SECONDS)

    def write_scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def write_image(self, tag, png_path, step):
        # The DET curve as the PNG the evaluation drew (probit axes, EER marked): TensorBoard's
        # PR-curve chart plots precision against recall on linear axes, which would mislabel
        # FAR/FRR and hide the low error rates a DET plot is read for.
        from matplotlib.image import imread
        self.writer.add_image(tag, imread(png_path), step, dataformats="HWC")

    def write_embeddings(self, name, matrix, names, speakers):
        # One set, the latest evaluation's, replaced each time: the projector reads TSV text,
        # and a set per evaluation would grow the folder by megabytes each time.
        from google.protobuf import text_format
        from tensorboard.plugins.projector import ProjectorConfig
        folder = self.folder / "projector"
        make_folders(folder)
        tensors = io.StringIO()
        np.savetxt(tensors, matrix, fmt="%.5g", delimiter="\t")
        write_text(folder / "tensors.tsv", tensors.getvalue())
        # The projector reads a single column without a header, several with one.
        rows = (["speaker\tfile"] + [f"{s}\t{n}" for s, n in zip(speakers, names)]) if speakers else names
        write_text(folder / "metadata.tsv", "".join(f"{row}\n" for row in rows))
        config = ProjectorConfig()
        entry = config.embeddings.add()
        entry.tensor_name = name
        entry.tensor_path = "projector/tensors.tsv"
        entry.metadata_path = "projector/metadata.tsv"
        write_text(self.folder / "projector_config.pbtxt", text_format.MessageToString(config))

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


def check_available(options):
    """Refuse --tensorboard without the tensorboard package, before any list is read."""
    if getattr(options, "tensorboard", False) and importlib.util.find_spec("tensorboard") is None:
        raise OptionError("--tensorboard needs the tensorboard package: install it with "
                          "python3 -m pip install tensorboard, or drop --tensorboard")


def open_tracker(options, save_path, step, is_main=True):
    """The run's tracker: TensorBoard in save_path/tensorboard with --tensorboard (on rank 0),
    else one that tracks nothing. `step` is the optimizer step training continues after (0
    on a fresh start): what an earlier run logged after it is dropped by TensorBoard."""
    if not (getattr(options, "tensorboard", False) and is_main):
        return Tracker()
    folder = Path(save_path) / FOLDER
    check_writable(folder, "--tensorboard logs")
    return TensorBoardTracker(folder, purge_step=step + 1)
