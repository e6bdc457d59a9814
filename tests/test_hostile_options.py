"""Hostile option values and configs: absurd sizes, YAML alias bombs and oversized files, empty
paths, values larger than what they act on, and YAML errors that must name file, line and key."""
import logging

import pytest
import torch

from loss import subcenter_aamsoftmax
from models import _specaugment
from speakernet.core import config_file
from speakernet.eval import evaluation as ev
from speakernet.run import option_checks
from speakernet.core.errors import UserError
from speakernet.core.option_types import QUOTED_CHARS
from speakernet.run.options import OptionError, parse_options
import trainSpeakerNet
from conftest import snapshot, train_argv
from DatasetLoader import read_train_list

REQUIRED = ["--model", "ResNetSE34L", "--trainfunc", "angleproto"]


def parse_error(argv):
    with pytest.raises(OptionError) as err:
        parse_options(argv)
    return str(err.value)


def config_error(path):
    with pytest.raises(OptionError) as err:
        config_file.load_config(path)
    return str(err.value)


def run_main(argv, caplog):
    """main(argv) -> (exit code, the trainer's ERROR messages)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in argv])
    return code, [r.getMessage() for r in caplog.records
                  if r.name == "trainSpeakerNet" and r.levelno >= logging.ERROR]


def warnings_of(caplog, fragment):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and fragment in r.getMessage()]


# ------------------------------------------------------------------ sizes that would allocate wildly

@pytest.mark.parametrize("name", sorted(option_checks.UPPER_BOUNDS))
def test_size_options_stop_at_their_bound(name):
    largest, _ = option_checks.UPPER_BOUNDS[name]
    small = ["--batch_size", "1", "--num_eval", "1"]       # keep the products below their bound
    assert getattr(parse_options(REQUIRED + small + [f"--{name}", str(largest)]), name) == largest
    message = parse_error(REQUIRED + small + [f"--{name}", str(largest + 1)])
    assert message.startswith(f"--{name} {largest + 1} is more than {largest} (")


def test_petabyte_crop_is_one_line_and_writes_nothing(tmp_path, corpus, caplog):
    code, errors = run_main(train_argv(corpus, tmp_path / "exp", max_frames=10 ** 12), caplog)
    assert code == 2 and len(errors) == 1 and errors[0].startswith("--max_frames 1000000000000 is more")
    assert snapshot(tmp_path / "exp") == {}


@pytest.mark.parametrize("argv, names", [
    (["--batch_size", "20000", "--nPerSpeaker", "2", "--max_frames", "1000"],
     ["--batch_size 20000", "--nPerSpeaker 2", "--max_frames 1000"]),
    (["--num_eval", "1000", "--eval_frames", "36001"], ["--num_eval 1000", "--eval_frames 36001"]),
])
def test_audio_held_at_once_is_bounded(argv, names):
    message = parse_error(REQUIRED + argv)
    assert " x ".join(names) in message and "hours of audio at once" in message


def test_babble_and_mask_counts_are_bounded():
    assert "--aug_babble 3 1000000000" in parse_error(REQUIRED + ["--aug_babble", "3", "1000000000"])
    with pytest.raises(UserError, match="--specaug_time_masks must be at most"):
        _specaugment.spec_augment_from_options(specaugment=True, specaug_time_masks=10 ** 9)
    with pytest.raises(UserError, match="--subcenter_k must lie in"):
        subcenter_aamsoftmax.LossFunction(nOut=4, nClasses=3, subcenter_k=10 ** 9)


# ------------------------------------------------------------------ YAML bombs and oversized configs

def billion_laughs(option):
    """Nine lines that stand for 10^9 strings under `option` (the anchors & and aliases *)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    lines.append(f"{option}: [{', '.join(['*a7'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("option", ["test_list", "batch_size", "aug_probs", "dcf_p_target"])
def test_alias_bomb_is_refused_before_it_is_expanded(config, option):
    path = config(billion_laughs(option))
    message = config_error(path)
    assert message.startswith(f"{path}:") and "values" in message and "alias" in message
    assert len(message) < 300


def test_value_containing_itself_is_refused(config):
    path = config("test_list: &loop [a.txt, *loop]\n")
    assert config_error(path).startswith(f"{path}:1:12: this value contains itself")


def test_aliases_of_ordinary_size_still_work(config):
    opts = parse_options(REQUIRED + ["--config", config("train_path: &root data/vox\ntest_path: *root\n")])
    assert opts.test_path == opts.train_path == "data/vox"


def test_config_larger_than_the_cap_is_refused_unread(config):
    path = config("# " + "x" * config_file.MAX_CONFIG_BYTES + "\n")
    assert config_error(path).startswith(f"--config {path}: larger than 1 MB")
    size = config_file.MAX_CONFIG_BYTES
    assert config_file.load_config(config("#" * (size - 1) + "\n", name="at_cap.yaml")) == {}


def test_deeply_nested_value_is_one_line(config):
    path = config("test_list: " + "[" * 5000 + "]" * 5000 + "\n")
    assert config_error(path).startswith(f"--config {path}: values nested too deeply")


def test_messages_quote_long_values_short(config, caplog):
    items = ", ".join(["1"] * 5000)
    message = parse_error(REQUIRED + ["--config", config(f"batch_size: [{items}]\n")])
    assert "'batch_size' expects int" in message
    assert len(message) < QUOTED_CHARS + 200
    path = config(f"lr: [{items}]\nlr: [{items}]\n", name="dup.yaml")
    with caplog.at_level(logging.WARNING, logger="options"):
        config_file.load_config(path)
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith(f"{path}:2: 'lr' is also set")
    assert len(caplog.messages[0]) < QUOTED_CHARS + 200


# ------------------------------------------------------------------ empty paths

@pytest.mark.parametrize("name", sorted(option_checks.REQUIRED_PATHS) + ["config"])
def test_empty_path_options_are_refused(name):
    assert parse_error(REQUIRED + [f"--{name}", ""]).startswith(f"--{name} is empty; give a ")


def test_empty_path_from_yaml_and_verify(config):
    assert parse_error(REQUIRED + ["--config", config("train_list: ''\n")]).startswith(
        "--train_list is empty")
    assert parse_error(["--verify", "a.wav", " ", "--initial_model", "m.model"]).startswith(
        "--verify is empty")


def test_empty_save_path_writes_nothing_in_the_current_folder(tmp_path, corpus, caplog, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    code, errors = run_main(train_argv(corpus, ""), caplog)
    assert (code, len(errors)) == (2, 1) and errors[0].startswith("--save_path is empty")
    assert snapshot(here) == {}


# ------------------------------------------------------------------ values larger than what they act on

def test_intertopk_k_above_the_classes_warns_naming_the_value_used(caplog):
    with caplog.at_level(logging.WARNING):
        loss = subcenter_aamsoftmax.LossFunction(nOut=8, nClasses=4, intertopk_k=10)
        subcenter_aamsoftmax.LossFunction(nOut=8, nClasses=4, intertopk_k=3)
    assert loss.top_k == 3
    assert warnings_of(caplog, "--intertopk_k") == [
        "--intertopk_k 10 is more than the 3 classes other than the target (--nClasses 4); using 3"]


def test_specaugment_wider_than_the_features_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(_specaugment, "_reported_clamps", set())
    augment = _specaugment.SpecAugment(max_freq=100, max_time=80, prob=1.0).train()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            augment(torch.randn(2, 40, 50))
        augment.eval()(torch.randn(2, 40, 30))            # evaluation never masks, never warns
    assert warnings_of(caplog, "--specaug_max_freq") == [
        "--specaug_max_freq 100 is more than the 40 feature bins; using 40"]
    assert warnings_of(caplog, "--specaug_max_time") == [
        "--specaug_max_time 80 is more than the 50 frames of the training crops; using 50"]


def test_asnorm_top_n_above_the_cohort_warns_once(corpus, caplog):
    train = read_train_list(corpus.train_list, corpus.root)
    settings = ev.EvalSettings(asnorm_top_n=50, cohort_utts=1)
    with caplog.at_level(logging.WARNING):
        evaluation = ev.Evaluation(str(corpus.test_list), corpus.root, settings, cohort_list=train,
                                   plots=False)
        for _ in range(2):
            report = evaluation.run(lambda files, lengths, root: torch.randn(len(files), 2, 8))
    speakers = len(train.speakers)
    assert warnings_of(caplog, "top_n") == [
        f"--asnorm_top_n 50 is more than the {speakers} speakers of the AS-norm cohort; using {speakers}"]
    assert report.settings.asnorm_top_n == speakers


# ------------------------------------------------------------------ YAML errors name file, line and key

@pytest.mark.parametrize("text, line, column", [
    ("batch_size: 3\n  lr: 0.1\n", 2, 5),                 # mapping values are not allowed here
    ("batch_size: 3\nlr: [1, 2\nmargin: 0.1\n", 3, 7),   # an unclosed flow list
    ("batch_size: 3\nlr: 0.1\x01\n", 2, 8),               # a control character
])
def test_yaml_syntax_error_is_one_located_line(config, text, line, column):
    path = config(text)
    message = parse_error(REQUIRED + ["--config", path])
    assert message.startswith(f"{path}:{line}:{column}: not valid YAML: ") and "\n" not in message


@pytest.mark.parametrize("text, fragment", [
    ("aug_probs: [0.1, abc, 0.2, 0.2, 0.2]\n", "'aug_probs' expects a list of 5 float; item 2 of"),
    ("dcf_p_target: [0.05, abc]\n", "'dcf_p_target': 'abc' is not a number"),
    ("far_targets: [0.05, 2]\n", "'far_targets': 2 in '[0.05, 2]' is not a fraction"),
    ("test_list: [a.txt, 3]\n", "'test_list' expects file paths (a string or a list of strings); "
                                "item 2 of ['a.txt', 3] is 3"),
    ("test_list: [a.txt, null]\n", "'test_list' expects file paths"),
])
def test_bad_list_element_names_file_and_key(config, text, fragment):
    path = config(text)
    assert parse_error(REQUIRED + ["--config", path]).startswith(f"{path}: {fragment}")


def test_config_key_inside_a_config_is_refused(config):
    path = config("config: other.yaml\nbatch_size: 3\n")
    assert parse_error(REQUIRED + ["--config", path]).startswith(
        f"{path}: 'config' cannot be set inside a config")
