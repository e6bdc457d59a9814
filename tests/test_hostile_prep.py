"""Hostile inputs to data_prep.py, the trial lists and python3 -m speakernet.tools.model_tools: each ends in one logged
line naming the input and the fix, exit status 2, and nothing written - or in a correct result
with a warning."""
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data_prep
from conftest import REPO, SR, tone, write_wav
from speakernet.core.errors import ListError
from speakernet.eval.trial_sets import load_trial_lists, read_trial_list

models_cli = importlib.import_module("speakernet.tools.model_tools")

# A corpus that --synthetic would write in about a second; every bad value below is refused
# before anything is.
TINY = ["--num_train_speakers", "2", "--utts_per_speaker", "2", "--num_test_speakers", "2",
        "--test_utts_per_speaker", "2", "--min_dur", "1", "--max_dur", "1", "--num_trials", "4",
        "--num_noise", "1", "--num_babble", "1", "--num_music", "1", "--num_rirs", "1", "--workers", "1"]


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def prep_fails(caplog, *argv):
    """data_prep.main(argv) exits 2 after exactly one ERROR line; returns that line."""
    caplog.clear()
    with pytest.raises(SystemExit) as err:
        data_prep.main([str(a) for a in argv])
    assert err.value.code == 2
    (message,) = errors(caplog)
    assert message == str(err.value) and "\n" not in message
    return message


def models_fails(caplog, *argv):
    """python3 -m speakernet.tools.model_tools with argv returns 2 after exactly one ERROR line; returns that line."""
    caplog.clear()
    assert models_cli.main([str(a) for a in argv]) == 2
    (message,) = errors(caplog)
    assert "\n" not in message
    return message


def wav(path, seed=0, sr=SR, channels=1):
    audio = tone(np.random.default_rng(seed), SR // 2, 150 + 40 * seed)
    return write_wav(path, np.stack([audio] * channels, 1) if channels > 1 else audio, sr=sr)


@pytest.fixture
def trial_files(tmp_path):
    """wav/ with a/1.wav, a/2.wav, b/1.wav (16 kHz mono) and a good trial list over them."""
    root = tmp_path / "wav"
    for seed, name in enumerate(("a/1.wav", "a/2.wav", "b/1.wav")):
        wav(root / name, seed)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    return root, trials


# ---------------------------------------------------------------------------- --baseline

def test_baseline_of_a_good_list_still_works(trial_files, capsys):
    root, trials = trial_files
    data_prep.main(["--baseline", "--test_list", str(trials), "--test_path", str(root)])
    assert "Baseline EER" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing file", "folder as list", "not UTF-8", "unlabelled",
                                  "no test_path folder", "8 kHz file"])
def test_baseline_bad_inputs_are_one_line(trial_files, caplog, case):
    root, trials = trial_files
    test_list, test_path, expected = trials, root, None
    if case == "missing file":
        trials.write_text("1 a/1.wav a/2.wav\n0 a/1.wav c/9.wav\n")
        expected = f"{trials}:2: {root / 'c/9.wav'}: file not found"
    elif case == "folder as list":
        test_list, expected = root, f"{root} is a directory, not a list file"
    elif case == "not UTF-8":
        trials.write_bytes(b"1 a/1.wav a/\xff.wav\n")
        expected = f"{trials}: not a UTF-8 text list"
    elif case == "unlabelled":
        trials.write_text("a/1.wav a/2.wav\n")
        expected = "needs labelled target (1) and non-target (0) trials"
    elif case == "no test_path folder":
        test_path, expected = root / "nowhere", f"--test_path {root / 'nowhere'}: no such folder"
    else:
        wav(root / "b/1.wav", sr=8000)
        expected = f"{trials}:2: {root / 'b/1.wav'}: sample rate 8000 Hz"
    assert expected in prep_fails(caplog, "--baseline", "--test_list", test_list, "--test_path", test_path)


# ---------------------------------------------------------------------------- --synthetic

@pytest.mark.parametrize("bad", [
    ["--num_train_speakers", "0"], ["--num_train_speakers", "-3"], ["--num_test_speakers", "1"],
    ["--utts_per_speaker", "0"], ["--seed", "-1"], ["--noise_snr_range", "nan", "nan"],
    ["--noise_snr_range", "30", "10"], ["--num_trials", "0"], ["--min_dur", "3"],
    ["--max_dur", "inf"], ["--channel_strength", "-1"], ["--reverb_prob", "1.5"],
    ["--num_rirs", "0"], ["--workers", "0"]])
def test_synthetic_numbers_are_checked_before_anything_is_written(tmp_path, caplog, bad):
    out = tmp_path / "demo"
    message = prep_fails(caplog, "--synthetic", "--save_path", out, *TINY, *bad)
    assert bad[0] in message
    assert not out.exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_save_path_that_is_a_file_is_named(tmp_path, caplog, below):
    blocker = tmp_path / "afile"
    blocker.write_text("keep\n")
    save_path = blocker / below if below else blocker
    message = prep_fails(caplog, "--synthetic", "--save_path", save_path, *TINY)
    assert f"--save_path {save_path}" in message and str(blocker) in message and "a file, not a folder" in message
    assert blocker.read_text() == "keep\n"


def test_damaged_settings_record_refuses_instead_of_a_traceback(tmp_path, caplog):
    (tmp_path / "synthetic_corpus.json").write_bytes(b"\xff\x00 not json")
    (tmp_path / "train_list.txt").write_text("keep\n")
    message = prep_fails(caplog, "--synthetic", "--save_path", tmp_path, *TINY)
    assert "not made by --synthetic" in message and "--overwrite" in message
    assert (tmp_path / "train_list.txt").read_text() == "keep\n"


def test_command_line_exit_status_is_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "data_prep.py"), "--synthetic", "--save_path",
                           str(tmp_path / "x"), "--num_trials", "0"], capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ERROR --num_trials 0" in lines[0], done.stderr


# ---------------------------------------------------------------------------- --make_list and lists

def test_make_list_leaves_out_files_the_trainer_refuses(tmp_path, caplog):
    root = tmp_path / "vox"
    wav(root / "id1/v/1.wav")
    wav(root / "id1/v/2.wav", sr=8000)
    wav(root / "id2/v/1.wav", channels=2)
    wav(root / "id2/v/2.wav", seed=1)
    out = tmp_path / "train_list.txt"
    with caplog.at_level(logging.WARNING):
        data_prep.main(["--make_list", str(root), "--list_out", str(out)])
    assert out.read_text() == "id1 id1/v/1.wav\nid2 id2/v/2.wav\n"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"2 .wav files under {root} are left out") and "id1/v/2.wav: sample rate 8000" in warning


def test_make_list_outputs_that_cannot_be_written(tmp_path, caplog):
    root = tmp_path / "vox"
    wav(root / "id1/v/1.wav")
    assert "--list_out" in prep_fails(caplog, "--make_list", root, "--list_out", root)
    blocker = tmp_path / "afile"
    blocker.write_text("keep\n")
    message = prep_fails(caplog, "--make_list", root, "--list_out", blocker / "list.txt")
    assert f"{blocker} is a file where a folder is needed" in message
    old = tmp_path / "old.txt"
    old.write_bytes(b"\xff\xfe binary\n")                  # an earlier file that is not UTF-8 text
    assert "--overwrite" in prep_fails(caplog, "--make_list", root, "--list_out", old)
    assert old.read_bytes() == b"\xff\xfe binary\n"


def test_file_names_that_are_not_utf8_are_named_not_a_traceback(tmp_path, caplog, capsys):
    root = tmp_path / "vox"
    wav(root / "id1/v/1.wav")
    odd = Path(os.fsdecode(bytes(root / "id1/v") + b"/\xff.wav"))   # soundfile cannot open such a name
    wav(root / "id1/v/2.wav").rename(odd)
    message = prep_fails(caplog, "--make_list", root, "--list_out", tmp_path / "list.txt")
    assert "1 file paths are not UTF-8, the first 'id1/v/\\xff.wav'" in message
    assert "1 problems" in prep_fails(caplog, "--check", root)
    assert "id1/v/\\xff.wav: the file name is not UTF-8" in capsys.readouterr().out
    assert odd.exists()


def test_download_list_that_is_not_utf8(tmp_path, caplog):
    bad = tmp_path / "urls.txt"
    bad.write_bytes(b"http://x/\xff.zip\n")
    message = prep_fails(caplog, "--download", "--download_list", bad, "--save_path", tmp_path / "data")
    assert message.startswith(f"{bad}: not a UTF-8 text list")


def test_contradictory_trial_labels_name_both_lines(tmp_path):
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav b.wav\n0 a.wav c.wav\n0 b.wav a.wav\n")
    with pytest.raises(ListError, match=f"^{trials}:3: the trial 'a.wav b.wav' is labelled 0 here and 1 on line 1"):
        read_trial_list(trials, tmp_path)                  # before any file is looked at


def test_same_trial_list_twice_is_scored_once_with_a_warning(trial_files, caplog):
    root, trials = trial_files
    with caplog.at_level(logging.WARNING):
        trial_set = load_trial_lists(f"{trials},{trials}", str(root))
    assert trial_set.paths == [str(trials)] and len(trial_set.lists) == 1
    assert f"--test_list names {trials} 2 times; it is scored once" in caplog.text


# ---------------------------------------------------------------------------- python3 -m speakernet.tools.model_tools

@pytest.mark.parametrize("bad", [["--batch", "0"], ["--frames", "-1"], ["--iterations", "0"],
                                 ["--device", "bogus"], ["--nOut", "0"]])
def test_profile_numbers_and_device_are_checked(caplog, bad):
    assert bad[0] in models_fails(caplog, "--profile", *bad)


def test_bench_seconds_must_be_finite(caplog):
    assert "--seconds must be" in models_fails(caplog, "--bench", "ResNetSE34L", "--seconds", "nan")


@pytest.mark.parametrize("text, expected", [("bach_size: 3\n", "unknown option 'bach_size'; did you mean 'batch_size'?"),
                                            ("nOut: abc\n", "'nOut' expects int, got 'abc'"),
                                            ("trainfunc: angleprot\n", "angleprot")])
def test_export_config_is_checked_as_the_trainer_checks_it(tmp_path, caplog, text, expected):
    config = tmp_path / "options.yaml"
    config.write_text("model: ResNetSE34L\n" + text)
    out = tmp_path / "enc.pt"
    assert expected in models_fails(caplog, "--export", "ResNetSE34L", "--random_weights", "--config", config,
                                    "--output", out)
    assert not out.exists()


def test_export_accepts_a_config_of_trainer_options(tmp_path):
    config = tmp_path / "options.yaml"
    config.write_text("model: ResNetSE34L\nnOut: 16\ntrainfunc: angleproto\nbatch_size: 3\nlr: 0.001\n")
    out = tmp_path / "enc.pt"
    assert models_cli.main(["--export", "ResNetSE34L", "--random_weights", "--config", str(config),
                            "--output", str(out)]) == 0
    assert out.exists()
