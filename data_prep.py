#!/usr/bin/env python3
"""Dataset preparation.

Demo data, made here:
  --synthetic   write a small VoxCeleb-style corpus made by our own source-filter voice
                synthesizer, plus MUSAN-style noise / babble / music chunks and simulated room
                impulse responses for --augment, then report the mean-log-mel baseline EER on it;
  --baseline    report that baseline EER for any trial list.

Real data, voxceleb_trainer's steps (combine them; they run in this order):
  python3 data_prep.py --save_path data --download --download_list LIST [--user U --password P]
  python3 data_prep.py --save_path data --concatenate --extract --convert
  python3 data_prep.py --save_path data --download --download_list augment.txt --augment
  python3 data_prep.py --make_list data/voxceleb2 --list_out data/train_list.txt
  python3 data_prep.py --check data/voxceleb1 --list data/veri_test2.txt
Every step shows progress, resumes after an interrupt and never rewrites a finished file.
"""
import argparse
import logging
import math
import os

from speakernet.core.errors import UserError
from speakernet.prep.baseline import baseline_eer, mean_log_mel, mel_filterbank
from speakernet.prep.common import PrepError, blocking_file, log, os_error_line
from speakernet.prep.convert import convert, prepare_augment
from speakernet.prep.fetch import concatenate, download, extract
from speakernet.prep.lists import check, make_list
from speakernet.prep.synth_corpus import draw_speaker, generate_synthetic, make_trials
from speakernet.prep.synth_noise import BABBLE_PER_SPEAKER, STATIONARY_NOISES, TRANSIENT_NOISES, generate_noise_sets

# Re-exported: other code (benchmarks, scripts) reaches these through data_prep.
__all__ = ["main", "baseline_eer", "mean_log_mel", "mel_filterbank", "draw_speaker", "make_trials",
           "generate_noise_sets", "STATIONARY_NOISES", "TRANSIENT_NOISES"]


REAL_DATA_STEPS = {"download": download, "concatenate": concatenate, "extract": extract, "convert": convert,
                   "augment": prepare_augment}          # in the order they run


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Fmt", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    p.add_argument("--synthetic", action="store_true", help="write the synthetic demo corpus and noise sets")
    p.add_argument("--baseline", action="store_true", help="only report the mean-log-mel baseline EER")
    p.add_argument("--save_path", help="output folder of --synthetic; data folder of the real-data steps "
                                       "(default there: data)")
    p.add_argument("--test_list", help="trial list for --baseline")
    p.add_argument("--test_path", help="folder the trial list's paths are relative to")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different corpus or noise set in --save_path, or a different --list_out")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes (synthesis, ffmpeg, MUSAN split); the output does not depend on it")
    add_synthetic_options(p.add_argument_group("synthetic corpus"))
    add_real_data_options(p.add_argument_group(
        "real data: voxceleb_trainer's steps (several run in this order); "
        "each resumes where it stopped and never rewrites a finished file"))
    add_list_options(p.add_argument_group("lists and checks"))
    return p


def add_synthetic_options(g):
    g.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    g.add_argument("--num_train_speakers", type=int, default=200, help="speakers of train_list.txt")
    g.add_argument("--num_test_speakers", type=int, default=40, help="other speakers, for test_list.txt")
    g.add_argument("--utts_per_speaker", type=int, default=24, help="per training speaker")
    g.add_argument("--test_utts_per_speaker", type=int, default=12, help="per test speaker")
    g.add_argument("--min_dur", type=float, default=2.0, help="seconds")
    g.add_argument("--max_dur", type=float, default=6.0, help="seconds")
    g.add_argument("--num_trials", type=int, default=4000, help="at most; half of them targets")
    g.add_argument("--channel_strength", type=float, default=1.0,
                   help="scales the sessions' EQ, band limits and noise colour (0 = none)")
    g.add_argument("--noise_snr_range", type=float, nargs=2, default=[15.0, 35.0], metavar=("LO", "HI"),
                   help="session background-noise SNR range, dB")
    g.add_argument("--reverb_prob", type=float, default=0.3, help="share of sessions in a reverberant room")
    g.add_argument("--num_noise", type=int, default=40, help="synthetic MUSAN-style noise chunks (5 s)")
    g.add_argument("--num_babble", type=int, default=60,
                   help="speech chunks for babble, from speakers in neither list (%d each)" % BABBLE_PER_SPEAKER)
    g.add_argument("--num_music", type=int, default=40, help="music chunks (5 s)")
    g.add_argument("--num_rirs", type=int, default=60, help="simulated room impulse responses (3 per room)")


def add_real_data_options(r):
    r.add_argument("--download", action="store_true", help="fetch --download_list into --save_path")
    r.add_argument("--download_list", help="lines 'URL MD5', 'MD5 URL' or 'URL'; bare file names are "
                                           "joined to --base_url")
    r.add_argument("--base_url", help="where the file names of --download_list are")
    r.add_argument("--user", help="HTTP user name (VoxCeleb's download account)")
    r.add_argument("--password", help="HTTP password")
    r.add_argument("--md5_list", help="more checksums: 'MD5 filename' (md5sum output) or 'URL MD5' lines")
    r.add_argument("--retries", type=int, default=3, help="download attempts, each resuming the last")
    r.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry")
    r.add_argument("--concatenate", action="store_true",
                   help="join vox1_dev_wav_parta* -> vox1_dev_wav.zip, vox2_dev_aac_parta* -> vox2_aac.zip")
    r.add_argument("--concat_list", help="'PATTERN OUTPUT [MD5]' lines instead (voxceleb_trainer's lists/files.txt)")
    r.add_argument("--extract", action="store_true",
                   help="unzip VoxCeleb into save_path/voxceleb1 (dev + test), voxceleb2, voxceleb2_test")
    r.add_argument("--convert", action="store_true", help="VoxCeleb2 m4a -> 16 kHz mono wav (ffmpeg)")
    r.add_argument("--augment", action="store_true",
                   help="musan.tar.gz -> musan_split (5 s chunks), rirs_noises.zip -> RIRS_NOISES/simulated_rirs")


def add_list_options(c):
    c.add_argument("--make_list", metavar="DIR", help="write a train list of DIR/speaker/video/utt.wav")
    c.add_argument("--list_out", metavar="FILE", help="where --make_list writes")
    c.add_argument("--check", metavar="DIR", help="report missing or unusable audio under DIR (or in --list)")
    c.add_argument("--list", metavar="FILE", help="train or trial list for --check, paths relative to DIR")
    c.add_argument("--list_format", choices=("auto", "train", "trial"), default="auto", help="of --list")


# The numeric options: option -> (lowest, highest), None for an open end; every value must also
# be finite. Checked before anything is written. The synthesizer's bounds keep its arithmetic
# finite (a --channel_strength of 50 or an SNR of -400 dB overflows) and its lists usable (a
# trial list needs a target and a non-target trial).
EVERY_MODE_RANGES = {"workers": (1, None)}
SYNTHETIC_RANGES = {
    "seed": (0, None), "num_train_speakers": (1, None), "utts_per_speaker": (1, None),
    "num_test_speakers": (2, None), "test_utts_per_speaker": (2, None), "min_dur": (0.5, 60),
    "max_dur": (0.5, 60), "num_trials": (2, None), "channel_strength": (0, 10),
    "noise_snr_range": (-50, 100), "reverb_prob": (0, 1), "num_noise": (1, None), "num_babble": (1, None),
    "num_music": (1, None), "num_rirs": (1, None)}
DOWNLOAD_RANGES = {"retries": (1, None), "timeout": (0.1, None)}


class BadInputExit(SystemExit):
    """Exit status 2 once a bad input's one line is logged; str() gives that line to callers of
    main() (tests, benchmarks)."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message

    def __str__(self):
        return self.message


def check_ranges(args, ranges):
    """PrepError naming the first option of `ranges` with a value outside its range or not finite."""
    for name, (low, high) in ranges.items():
        value = getattr(args, name)
        numbers = value if isinstance(value, list) else [value]
        if all(math.isfinite(x) and (low is None or x >= low) and (high is None or x <= high) for x in numbers):
            continue
        wanted = "at least %g" % low if high is None else "between %g and %g" % (low, high)
        if not all(map(math.isfinite, numbers)):
            wanted = "a finite number " + wanted
        raise PrepError("--%s %s: %s %s" % (name, " ".join("%g" % x for x in numbers),
                                            "each value must be" if len(numbers) > 1 else "must be", wanted))


def check_synthetic_options(args):
    check_ranges(args, SYNTHETIC_RANGES)
    if args.min_dur > args.max_dur:
        raise PrepError("--min_dur %g is above --max_dur %g (give min_dur <= max_dur, in seconds)"
                        % (args.min_dur, args.max_dur))
    low, high = args.noise_snr_range
    if low > high:
        raise PrepError("--noise_snr_range %g %g: the first value is the low end (give LOW HIGH, e.g. %g %g)"
                        % (low, high, high, low))


def check_output_folder(path, option="--save_path"):
    """PrepError, before anything is written, when a file stands where the folder `path` (or a
    folder above it) must be."""
    blocker = blocking_file(path)
    if blocker is None:
        return
    if blocker == os.path.abspath(path):
        raise PrepError("%s %s is a file, not a folder (give a folder, new or existing)" % (option, path))
    raise PrepError("%s %s cannot be made: %s is a file, not a folder (choose another %s, or move that file "
                    "away)" % (option, path, blocker, option))


def check_one_mode(p, args, steps):
    modes = [m for m, on in (("--synthetic", args.synthetic), ("--baseline", args.baseline),
                             ("the real-data steps", steps), ("--make_list", args.make_list),
                             ("--check", args.check)) if on]
    if len(modes) != 1:
        p.error("give one of --synthetic, --baseline, --make_list, --check or real-data steps (--download, "
                "--concatenate, --extract, --convert, --augment); got %s" % (", ".join(modes) or "none"))


def run_real_data(args, steps):
    """The real-data steps, --make_list or --check."""
    if steps:
        args.save_path = args.save_path or "data"
        check_ranges(args, DOWNLOAD_RANGES)
        check_output_folder(args.save_path)
        for step in steps:
            REAL_DATA_STEPS[step](args)
    elif args.make_list:
        if not args.list_out:
            raise PrepError("--make_list needs --list_out FILE (where the list is written)")
        make_list(args)
    else:
        check(args)


def write_synthetic(args):
    """--synthetic: the corpus and its noise sets; its trial list is then the baseline's."""
    if not args.save_path:
        raise PrepError("--synthetic needs --save_path (the folder to write the corpus to)")
    check_synthetic_options(args)
    check_output_folder(args.save_path)
    generate_synthetic(args)
    generate_noise_sets(args)
    args.test_list = os.path.join(args.save_path, "test_list.txt")
    args.test_path = os.path.join(args.save_path, "wav")


def report_baseline(args):
    if not (args.test_list and args.test_path):
        raise PrepError("--baseline needs --test_list FILE and --test_path DIR (the folder its paths are "
                        "relative to)")
    if not os.path.isdir(args.test_path):
        raise PrepError("--test_path %s: no such folder (the folder the paths of --test_list %s are "
                        "relative to)" % (args.test_path, args.test_list))
    eer = baseline_eer(args.test_list, args.test_path)
    # The result line is the command's output (stdout); progress goes to the log.
    print("Baseline EER (mean log-mel, cosine): %.2f%% on %s" % (eer, args.test_list))


def run(p, args):
    """The one mode the options choose; bad input raises a UserError (or an OSError naming a path)."""
    steps = [s for s in REAL_DATA_STEPS if getattr(args, s)]
    check_one_mode(p, args, steps)
    check_ranges(args, EVERY_MODE_RANGES)
    if steps or args.make_list or args.check:
        run_real_data(args, steps)
        return
    if args.synthetic:
        write_synthetic(args)
    report_baseline(args)


def main(argv=None):
    """The command line. A bad input ends it with one logged line and exit status 2 (BadInputExit),
    an interrupt with 130; finished files are kept either way."""
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run(p, args)
    except UserError as err:
        message = str(err)
    except OSError as err:                # a path that is not there or cannot be written: names it
        message = os_error_line(err)
    except KeyboardInterrupt:
        log.error("interrupted: finished files are kept; run the same command again to resume")
        raise SystemExit(130) from None
    else:
        return
    log.error("%s", message)
    raise BadInputExit(message)


if __name__ == "__main__":
    main()
