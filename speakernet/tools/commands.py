"""The modes of trainSpeakerNet.py that use a trained model: --extract, --eval, --calibrate and
--verify, with what they share with training (the run folder, the starting weights, the
extract callable evaluation.py embeds through)."""
import logging
import os
import shutil
from pathlib import Path

import torch.nn as nn

from speakernet.eval import calibration, evaluation
from speakernet.core import checkpoint
from speakernet.run import plugins
from speakernet.model import public_models
from speakernet.core.atomic import make_folders
from speakernet.core.audio import SAMPLE_RATE
from speakernet.eval.embeddings import embed_files, extract_to_npz, files_to_export, shared_extract
from speakernet.core.errors import UserError
from speakernet.run.options import OptionError, component_values
from speakernet.eval.extractor import Extractor
from speakernet.run.precision import autocast

log = logging.getLogger("trainSpeakerNet")


# ---------------------------------------------------------------------------- shared with training

def prepare_save_path(save_path, needed_bytes=0):
    """Create save_path's folders and prove they are writable, with room for checkpoints."""
    save_path = Path(save_path)
    try:
        for sub in ("model", "result"):
            make_folders(save_path / sub)
        probe = save_path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise OptionError(f"--save_path {save_path} is not writable: {err.strerror}") from None
    free = shutil.disk_usage(save_path).free
    if free < needed_bytes:
        raise OptionError(f"--save_path {save_path}: only {free / 1e6:.0f} MB free, checkpoints "
                          f"need about {needed_bytes / 1e6:.0f} MB; free some space")
    return save_path


def newest_checkpoint(save_path):
    found = checkpoint.list_checkpoints(Path(save_path) / "model")
    if not found:
        raise OptionError(f"this needs --initial_model, or a checkpoint in {save_path}/model")
    return found[-1][1]


def load_initial_weights(model, source):
    if public_models.is_public_model(source):          # a wespeaker model folder
        return public_models.load_initial_weights(model, source)
    state = checkpoint.model_state(checkpoint.load_file(source), model, source)
    checkpoint.load_weights(model, state, source, new_objective_shapes=True)


def make_extractor(extractor, options, seconds=0.0):
    """extract(files, lengths, root) -> files x crops x D, as evaluation.py expects; under
    --distributed each rank embeds its share of the files and all ranks receive all.
    seconds > 0: every file cut to its middle `seconds` first (--eval_seconds)."""
    segment = round(seconds * SAMPLE_RATE)
    return shared_extract(
        lambda files, lengths, root: extractor.extract_files(files, lengths, root, options.eval_frames,
                                                             options.num_eval, options.nDataLoaderThread,
                                                             segment=segment))


def _loaded_extractor(options, model, device, rank, source):
    """The embedding path over `model`'s encoder with the weights of `source`."""
    load_initial_weights(model, source)
    model.to(device).eval()
    return Extractor(model.encoder, device, autocast(device, options.mixedprec), show_progress=rank == 0)


# ---------------------------------------------------------------------------- modes

def extract_only(options, model, device, rank=0):
    """--extract: embeddings of a list's files (or of every trial-list file) to one .npz."""
    file_set = files_to_export(options)
    source = options.initial_model or newest_checkpoint(options.save_path)
    extract = make_extractor(_loaded_extractor(options, model, device, rank, source), options)
    normalize = model.contract.test_normalize
    if rank != 0:      # embeds its share for rank 0, which writes the file
        embed_files(extract, file_set.files, file_set.lengths, file_set.root, normalize=normalize,
                    keep_crops=options.extract_crops)
        return None
    return extract_to_npz(options.extract, extract, file_set, keep_crops=options.extract_crops,
                          normalize=normalize)


def evaluate_only(options, model, device, rank=0):
    """--eval: score the trial lists with --initial_model or the newest checkpoint (under
    --distributed every rank embeds a share of the files; rank 0 scores and writes)
    -> the EvaluationReport on rank 0, None on the others."""
    evaluator = evaluation.Evaluation.from_options(options)
    source = options.initial_model or newest_checkpoint(options.save_path)
    extractor = _loaded_extractor(options, model, device, rank, source)
    if rank == 0:
        prepare_save_path(options.save_path)
        log.info("evaluating %s on %s", source, ", ".join(map(str, evaluator.trial_set.paths)))
    normalize = model.contract.test_normalize
    report = evaluator.run(make_extractor(extractor, options), tag="eval", score=rank == 0,
                           normalize=normalize)
    for seconds in options.eval_seconds:       # short-utterance evaluation, same trials
        if rank == 0:
            log.info("evaluating with every test file cut to its middle %g s", seconds)
        evaluator.run(make_extractor(extractor, options, seconds), tag=f"eval_{seconds:g}s",
                      score=rank == 0, normalize=normalize)
    return report


def calibrate_only(options, model, device, rank=0):
    """--calibrate DEV: fit score -> LLR on the dev list's scores, write the calibrated copy of
    the checkpoint (calibration.calibrated_path: <stem>.calibrated.model, or .calibrated.N.model
    for a copy calibrated before; the checkpoint itself is never changed) and
    evaluate the --test_list lists with actDCF, Cllr and min Cllr (speakernet/eval/calibration.py)."""
    if options.distributed:
        raise OptionError("--calibrate runs in one process; drop --distributed")
    source = options.initial_model or newest_checkpoint(options.save_path)
    target = calibration.calibrated_path(source)
    calibration.check_new_file(target, source)            # before any embedding
    evaluator = evaluation.Evaluation.from_options(options)
    extractor = _loaded_extractor(options, model, device, rank, source)
    prepare_save_path(options.save_path)
    log.info("calibrating %s on %s; evaluating %s", source, options.calibrate,
             ", ".join(map(str, evaluator.trial_set.paths)))
    return evaluator.run(make_extractor(extractor, options), tag="eval",
                         normalize=model.contract.test_normalize,
                         on_calibrated=lambda fitted: write_calibrated_checkpoint(
                             source, target, fitted, options))


def write_calibrated_checkpoint(source, target, calibration, options):
    """The checkpoint `source` with `calibration` and the calibrating run's options, saved as a new
    file `target` (never replacing one) -> target."""
    stored = _stored_weights(source)
    if isinstance(stored, dict) and stored.get("format") == checkpoint.FORMAT:
        new = dict(stored)
    else:       # voxceleb_trainer's state dict: our format, our parameter names
        new = {"format": checkpoint.FORMAT, "model": _our_names(stored, options, source)}
    new["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}
    new["calibration"] = calibration.to_dict()
    new["calibrated_from"] = str(source)
    target = Path(target)
    if target.exists():
        raise UserError(f"{target} appeared during the calibration; nothing was written (move it away "
                        f"and run again)")
    checkpoint.save_atomic(new, target)
    log.info("wrote the calibrated checkpoint %s (llr = %.6g * score + %.6g, prior %g); %s is unchanged",
             target, calibration.scale, calibration.offset, calibration.prior, source)
    return target


def _stored_weights(source):
    """The checkpoint `source`; a public model folder as one of ours (its encoder, our names)."""
    if public_models.is_public_model(source):
        return {"format": checkpoint.FORMAT, "model": public_models.our_state(source)}
    return checkpoint.load_file(source)


def _our_names(stored, options, source):
    encoder = plugins.factory("models", options.model)(**component_values("models", options.model, options))
    return checkpoint.model_state(stored, nn.ModuleDict({"encoder": encoder}), source)


def verify_only(options, device):
    """--verify A B: score two files with --initial_model (its own model and options) and log
    the score, the LLR and the decision (speakernet/model/embedder.py) -> the Verification; a
    checkpoint without a calibration or a stored threshold (an epoch checkpoint) gives the score
    alone, with a warning saying which checkpoints decide -> the score."""
    from speakernet.model.embedder import Embedder

    embedder = Embedder.from_checkpoint(options.initial_model, device=device)
    if not embedder.decides:
        score = embedder.score(*options.verify)
        log.info("score %.6f", score)
        log.warning("%s", embedder.no_decision())
        return score
    result = embedder.verify(*options.verify, p_target=options.calibration_prior or None)
    log.info("%s", result.describe())
    return result
