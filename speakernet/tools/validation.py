"""Evaluation during training: the epoch's EvaluationReport, its line in result/scores.txt and
metrics.jsonl (and the run's tracker), the training curves, and best.model by the first list's EER."""
import logging
import math

import torch
import torch.distributed as dist

from speakernet.core import checkpoint
from speakernet.run import run_log
from speakernet.tools.commands import make_extractor
from speakernet.run.tracking import ProjectedFiles

log = logging.getLogger("trainSpeakerNet")


def _stored_eer(state, path):
    """The EER best.model was chosen by (inf when it holds none)."""
    eer = state.get("eer", math.inf) if isinstance(state, dict) else None
    if isinstance(eer, bool) or not isinstance(eer, (int, float)) or math.isnan(eer):
        raise checkpoint.CheckpointError(f"{path} holds no valid EER (altered or not written by this "
                                         f"project)")
    return float(eer)


class Validation:
    """Evaluation during training: scores, metrics file, curves, the best checkpoint."""

    def __init__(self, options, model, trainer, evaluator, save_path):
        self.options = options
        self.is_main = trainer.is_main
        self.trainer = trainer
        self.tracker = trainer.tracker
        self.model = model
        self.extract = make_extractor(trainer.extractor(), options)
        self.projected = None
        if self.tracker.enabled:        # the tracker gets the embeddings this evaluation extracts
            self.projected = ProjectedFiles(evaluator.trial_set.files, evaluator.test_path,
                                            model.contract.test_normalize)
            self.extract = self.projected.watch(self.extract)
        self.evaluator = evaluator
        self.save_path = save_path
        best = save_path / "model" / "best.model"
        self.best_eer = math.inf
        if best.exists():
            try:
                self.best_eer = _stored_eer(checkpoint.load_file(best), best)
            except checkpoint.CheckpointError as err:
                log.warning("%s; the next evaluation replaces it", err)

    def recorded(self, epoch):
        """Whether metrics.jsonl holds the evaluation of `epoch` (rank 0 decides for all ranks)."""
        metrics = self.save_path / "metrics.jsonl"
        done = self.is_main and metrics.exists() and any(
            r.get("epoch") == epoch and any(k.startswith("val_eer") for k in r)
            for r in run_log.read_metrics(metrics))
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(done)])
            dist.broadcast(flag, src=0)
            done = bool(flag.item())
        return done

    def evaluate(self, epoch, stats=None):
        """Evaluate the model as it is after `epoch` -> the EvaluationReport (None on the ranks
        other than 0, which only embed their share)."""
        normalize = self.model.contract.test_normalize
        report = self.evaluator.run(self.extract, normalize=normalize, tag=f"epoch{epoch:04d}",
                                    score=self.is_main)
        if not self.is_main:
            return None
        first = report.primary
        min_dcf = next(iter(first.min_dcf.values()), None)
        with open(self.save_path / "result" / "scores.txt", "a", encoding="utf-8") as handle:
            handle.write(f"epoch {epoch}, EER {first.eer}, MinDCF {min_dcf}\n")
        if stats is not None:
            self.record(epoch, {**stats, **report.summary_record()}, report)
            run_log.plot_training_curves(self.save_path / "metrics.jsonl",
                                         self.save_path / "training_curves.png")
        return report

    def record(self, epoch, values, report=None):
        """Append the epoch's record to metrics.jsonl and send it (with the report's DET curves
        and test embeddings) to the tracker, at the step the epoch ended (rank 0 only)."""
        record = {"epoch": epoch, **values}
        run_log.append_metrics(self.save_path / "metrics.jsonl", record)
        self.tracker.log_record(record, self.trainer.step)
        if report is not None:
            self.tracker.log_evaluation(report, self.trainer.step, self.projected)
        self.tracker.flush()

    def keep_best(self, state, report):
        """Copy the checkpoint to best.model when the first list's EER improves, with that EER
        and its raw-score threshold (what Embedder.verify decides by without a calibration)."""
        eer = report.primary.eer
        if eer is not None and eer < self.best_eer:
            self.best_eer = eer
            checkpoint.save_atomic({**state, "eer": eer, "eer_threshold": report.primary.eer_threshold},
                                   self.save_path / "model" / "best.model")
