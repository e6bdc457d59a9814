#!/usr/bin/env python3
"""Our embedding of a wespeaker ECAPA_TDNN_GLOB_c512 release against wespeaker's own module.

    python3 benchmarks/compare_wespeaker.py --wespeaker PATH_TO_A_WESPEAKER_CLONE

wespeaker is not on the package index, so this comparison runs against a clone of its
repository, outside this one, and is not part of the test suite (tests/test_public_ecapa.py
compares the same release with its formulas written out). The release is random weights in
wespeaker's published names and shapes (tests/fixtures/wespeaker_ecapa_c512.json), written as
a model folder (config.yaml, avg_model.pt); both sides get the same Kaldi fbank with mean
normalisation. Prints the largest absolute difference of the unit-length embeddings per
duration and exits 1 when one exceeds --tolerance.
"""
import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from speakernet.model.embedder import Embedder  # noqa: E402
from test_public_ecapa import WESPEAKER, random_state, wespeaker_folder  # noqa: E402
from test_public_models import kaldi_cmn, speech_like  # noqa: E402

log = logging.getLogger("compare_wespeaker")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wespeaker", required=True, help="a clone of github.com/wenet-e2e/wespeaker")
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 2.0, 3.7, 8.2])
    p.add_argument("--tolerance", type=float, default=1e-5)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(args.wespeaker).resolve()))
    try:
        from wespeaker.models.ecapa_tdnn import ECAPA_TDNN_GLOB_c512
    except ImportError as err:
        log.error("--wespeaker %s: cannot import wespeaker.models.ecapa_tdnn (%s); give the folder "
                  "that holds wespeaker/", args.wespeaker, err)
        return 2
    state = random_state(WESPEAKER["state_dict"])
    theirs = ECAPA_TDNN_GLOB_c512(**WESPEAKER["model_args"]).eval()
    theirs.load_state_dict({k: v for k, v in state.items() if not k.startswith("projection.")})
    with tempfile.TemporaryDirectory() as folder:
        ours = Embedder.from_checkpoint(str(wespeaker_folder(Path(folder) / "voxceleb_ECAPA512", state=state)))
        worst = 0.0
        for seed, seconds in enumerate(args.seconds):
            wav = speech_like(seconds, seed=seed)
            with torch.no_grad():
                reference = F.normalize(theirs(kaldi_cmn(wav).T[None])[-1][0], dim=0)
            difference = (ours.embed(wav) - reference).abs().max().item()
            worst = max(worst, difference)
            log.info("%5.1f s: max abs difference %.3g", seconds, difference)
    log.info("largest difference %.3g (tolerance %g)", worst, args.tolerance)
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
