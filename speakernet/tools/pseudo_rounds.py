"""Pseudo-label rounds, one command: a first stage of self-supervised training on the training
list read as bare paths, then --pseudo_rounds rounds of (embed every utterance with the newest
model -> cluster -> pseudo-labelled list -> supervised training initialised from that model).

Everything lives under --save_path:

    unlabelled_list.txt          the training list's paths, without its speaker column
    stage1/                      the first stage, an ordinary run (checkpoints, logs, scores)
    round1/pseudo_list.txt       'pseudoNNNNN path' lines of the kept utterances
    round1/clusters.json         K, its choice, what was kept, purity / NMI when labels exist
    round1/ ...                  that round's run, initialised from the stage before
    pipeline.json, pipeline.md   each finished stage: clusters, EER, minDCF, minutes

Each stage is an ordinary training run in its own folder, so a kill anywhere resumes there
(the trainer's exact resume); finished stages are recorded in pipeline.json and skipped on a
rerun, and a round's list is reused once written. The stage options are the run's (YAML and
command line), with --pseudo_round_options on top for the rounds; --nClasses, --train_list,
--initial_model and --save_path are the pipeline's. True speaker labels, when the list has
them, are read only for the purity / NMI diagnostics, after the clustering.
"""
import json
import logging
import sys
import time
from pathlib import Path


from speakernet.core import checkpoint
from speakernet.data import pseudo_labels
from speakernet.core.atomic import make_folders, write_text
from speakernet.core.audio import list_lines
from speakernet.model.embedder import Embedder
from speakernet.eval.embeddings import embed_files
from speakernet.core.errors import OptionError
from speakernet.run.options import parse_options
from speakernet.core.train_list import read_train_list
from speakernet.eval.extractor import Extractor
from speakernet.run.precision import autocast

log = logging.getLogger("pseudo_rounds")
RECORD = "pipeline.json"


def read_list_columns(path):
    """(paths, speaker names or None) of a training list of 'speaker path' or 'path' lines."""
    paths, names = [], []
    for number, columns in list_lines(path):
        if len(columns) not in (1, 2):
            raise OptionError(f"{path}:{number}: expected 'speaker path' or 'path', got "
                              f"{len(columns)} columns")
        paths.append(columns[-1])
        names.append(columns[0] if len(columns) == 2 else None)
    if not paths:
        raise OptionError(f"{path}: the training list is empty")
    return paths, (None if None in names else names)


class Pipeline:
    """The stages of one --pseudo_rounds run under --save_path (see the module docstring)."""

    def __init__(self, argv, options, train_stage):
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.options = options
        self.train_stage = train_stage           # stage options -> EvaluationReport
        self.root = Path(options.save_path)
        self.paths, self.truth = read_list_columns(options.train_list)
        pseudo_labels.check_options(options, len(self.paths))
        if options.pseudo_from:
            check_architecture(options.pseudo_from, options.model)
        self.round_argv = pseudo_labels.round_argv(options.pseudo_round_options)
        self.stage_options(self.round_argv)       # a mistake there stops the run now, not later
        self.record = self._load_record()

    # ------------------------------------------------------------------ records
    def _load_record(self):
        path = self.root / RECORD
        if not path.exists():
            return {}
        try:
            return {stage["name"]: stage for stage in json.loads(path.read_text())["stages"]}
        except (ValueError, KeyError, TypeError):
            log.warning("%s cannot be read; stages are checked again from their folders", path)
            return {}

    def _save_record(self):
        stages = sorted(self.record.values(), key=lambda s: s["order"])
        write_text(self.root / RECORD, json.dumps({"stages": stages}, indent=1) + "\n")
        write_text(self.root / "pipeline.md", table(stages))

    def done(self, name):
        stage = self.record.get(name)
        if stage is None or not Path(stage["model"]).exists():
            return False
        log.info("%s: finished before (%s), skipped", name, stage["model"])
        return True

    # ------------------------------------------------------------------ stages
    def stage_options(self, extra):
        return parse_options(self.argv + extra + ["--pseudo_rounds", "0"], replaced_components_ok=True)

    def run(self):
        make_folders(self.root)
        unlabelled = self.root / "unlabelled_list.txt"
        text = "\n".join(self.paths) + "\n"
        if not unlabelled.exists() or unlabelled.read_text() != text:   # its manifest stays valid
            write_text(unlabelled, text)
        model = self.options.pseudo_from
        if not model:
            model = self.train("stage1", ["--train_list", str(unlabelled)], order=0)
        first = model
        for number in range(1, self.options.pseudo_rounds + 1):
            origin = first if self.options.pseudo_start == "first" else model
            model = self.round(number, model, unlabelled, origin)
        stages = sorted(self.record.values(), key=lambda s: s["order"])
        log.info("pseudo-label rounds finished in %.1f minutes; the final model is %s\n%s",
                 sum(s["minutes"] for s in stages), model, table(stages))
        return stages

    def train(self, name, extra, order, clustering=None, seconds=0.0):
        if self.done(name):
            return self.record[name]["model"]
        save_path = self.root / name
        options = self.stage_options(extra + ["--save_path", str(save_path)])
        log.info("%s: training %s with %s for %d epochs", name, options.model, options.trainfunc,
                 options.max_epoch)
        start = time.perf_counter()
        report = self.train_stage(options)
        model = checkpoint.checkpoint_path(save_path / "model", options.max_epoch)
        primary = report.primary if report is not None else None
        self.record[name] = {
            "name": name, "order": order, "model": str(model), "trainfunc": options.trainfunc,
            "epochs": options.max_epoch, "eer": getattr(primary, "eer", None),
            "min_dcf": next(iter(getattr(primary, "min_dcf", {}).values()), None),
            "minutes": (seconds + time.perf_counter() - start) / 60.0, **(clustering or {})}
        self._save_record()
        return str(model)

    def round(self, number, model, unlabelled, origin):
        """Cluster with `model`, then train from `origin` on the clusters -> the round's model."""
        name = f"round{number}"
        if self.done(name):
            return self.record[name]["model"]
        folder = self.root / name
        make_folders(folder)
        listed, summary = folder / "pseudo_list.txt", folder / "clusters.json"
        start = time.perf_counter()
        if summary.exists() and listed.exists():       # written before the round's training
            clustering = json.loads(summary.read_text())
        else:
            clustering = self.cluster(model, unlabelled, listed, number)
            write_text(summary, json.dumps(clustering, indent=1) + "\n")
        extra = self.round_argv + [
            "--train_list", str(listed), "--nClasses", str(clustering["kept_clusters"]),
            "--initial_model", str(origin)]
        return self.train(name, extra, number, clustering, time.perf_counter() - start)

    def cluster(self, model, unlabelled, listed, number):
        """Embed the unlabelled list with `model`, cluster, write the kept utterances' list."""
        options = self.options
        train_list = read_train_list(unlabelled, options.train_path, need_labels=False,
                                     allow_outside=options.allow_outside_paths, recheck=options.recheck_audio)
        log.info("round %d: embedding %d utterances with %s", number, len(train_list.files), model)
        embeddings = embed_with(model, train_list, options)
        pseudo_labels.finite_or_fail(embeddings, model)
        seed = options.seed + number
        k, scores = pseudo_labels.choose_clusters(embeddings, options, seed)
        labels, clusters = pseudo_labels.pseudo_labels(embeddings, k, options.pseudo_keep, seed,
                                                        options.pseudo_method)
        if (labels >= 0).sum() == 0:
            raise OptionError(f"round {number}: no cluster of {k} kept 2 or more utterances; "
                              f"lower --pseudo_clusters or raise --pseudo_keep")
        pseudo_labels.write_list(listed, self.paths, labels)
        record = {"clusters": k, "method": options.pseudo_method, "k_scores": {str(c): s for c, s in scores.items()},
                  "utterances": len(labels), "kept": int((labels >= 0).sum()),
                  "kept_clusters": int(labels.max()) + 1,
                  **pseudo_labels.diagnostics(labels, clusters, self.truth)}
        log.info("round %d: %s", number, pseudo_labels.describe(record))
        return record


def check_architecture(path, model):
    """--pseudo_from must hold the encoder the rounds train (they start from its weights)."""
    stored = checkpoint.load_file(path)
    saved = stored.get("options", {}).get("model") if isinstance(stored, dict) else None
    if saved is None:
        raise OptionError(f"--pseudo_from {path} holds no run options naming its model; give a "
                          f"checkpoint written by trainSpeakerNet.py")
    if saved != model:
        raise OptionError(f"--pseudo_from {path} holds a {saved} encoder but --model is {model}; "
                          f"set --model {saved} or start from a {model} checkpoint")


def embed_with(model_path, train_list, options):
    """One embedding per utterance (unit mean of --pseudo_crops crops) -> N x D numpy."""
    embedder = Embedder.from_checkpoint(model_path, options.device)
    extractor = Extractor(embedder.encoder, embedder.device, autocast(embedder.device, options.mixedprec))

    def extract(files, lengths, root):
        return extractor.extract_files(files, lengths, root, options.pseudo_frames, options.pseudo_crops,
                                       options.nDataLoaderThread)

    origins = [train_list.origin(i) for i in range(len(train_list.files))]
    embeddings, _ = embed_files(extract, train_list.files, train_list.lengths, "", origins=origins)
    return embeddings.numpy()


def _cell(value, form):
    return "" if value is None else format(value, form)


def table(stages):
    """The markdown table of finished stages."""
    rows = ["| stage | objective | epochs | clusters (kept) | utterances kept | purity | NMI | EER % | minDCF | minutes |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        clusters = f"{s['clusters']} ({s['kept_clusters']})" if "clusters" in s else ""
        kept = f"{s['kept']} of {s['utterances']}" if "kept" in s else ""
        rows.append(f"| {s['name']} | {s['trainfunc']} | {s['epochs']} | {clusters} | {kept} | "
                    f"{_cell(s.get('purity_kept'), '.3f')} | {_cell(s.get('nmi_kept'), '.3f')} | "
                    f"{_cell(s.get('eer'), '.2f')} | {_cell(s.get('min_dcf'), '.4f')} | "
                    f"{s['minutes']:.1f} |")
    return "\n".join(rows) + "\n"

