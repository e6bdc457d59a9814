"""Option faults caught at parse time: NaN/Inf and out-of-range numbers, --aug_probs, a
--config that is no readable file, component defaults of generic options (OPTION_DEFAULTS),
duplicate YAML keys, --verify without --model/--trainfunc."""
import errno
import importlib
import logging

import pytest

from speakernet.data import augment
from speakernet.run import options
from speakernet.run import plugins
import trainSpeakerNet
from conftest import snapshot, train_argv
from speakernet.core.errors import UserError
from speakernet.run.options import OptionError, parse_options

REQUIRED = ["--model", "ResNetSE34L", "--trainfunc", "angleproto"]
TRIPLET = ["--trainfunc", "triplet"]          # its mining options are its own to check


def run_main(argv, caplog):
    """main(argv) -> (exit code, messages of the trainer's ERROR records)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in argv])
    errors = [r.getMessage() for r in caplog.records
              if r.name == "trainSpeakerNet" and r.levelno >= logging.ERROR]
    return code, errors


def parse_error(argv):
    with pytest.raises(OptionError) as err:
        parse_options(argv)
    return str(err.value)


# ------------------------------------------------------------------ A: finite floats

@pytest.mark.parametrize("value", ["nan", "inf", "NaN", "Infinity"])
def test_non_finite_lr_on_command_line(value):
    shown = "nan" if value.lower() == "nan" else "inf"
    assert parse_error(REQUIRED + ["--lr", value]) == f"--lr must be a finite number, got {shown}"


@pytest.mark.parametrize("text, message", [
    ("lr: .nan\n", "--lr must be a finite number, got nan"),
    ("lr: .inf\n", "--lr must be a finite number, got inf"),
    ("lr: nan\n", "--lr must be a finite number, got nan"),           # a string, converted
    ("margin: -.inf\n", "--margin must be a finite number, got -inf"),
    ("aug_probs: [0.2, .nan, 0.2, 0.2, 0.2]\n", "--aug_probs must be finite numbers, got 0.2 nan 0.2 0.2 0.2"),
])
def test_non_finite_float_from_yaml(config, text, message):
    assert parse_error(REQUIRED + ["--config", config(text)]) == message


@pytest.mark.parametrize("argv, name", [
    (["--weight_decay", "nan"], "--weight_decay"),
    (["--scale", "inf"], "--scale"),
    (["--dcf_c_miss", "nan"], "--dcf_c_miss"),
    (["--aug_fraction", "nan"], "--aug_fraction"),
    (["--specaug_prob", "nan"], "--specaug_prob"),
    (["--speed_factors", "1.0", "nan"], "--speed_factors"),
    (["--aug_snr_noise", "0", "inf"], "--aug_snr_noise"),
])
def test_every_core_float_option_is_checked(argv, name):
    assert parse_error(REQUIRED + argv).startswith((f"{name} must be a finite number, got ",
                                                     f"{name} must be finite numbers, got "))


@pytest.mark.parametrize("argv, name", [
    (["--trainfunc", "circle", "--circle_chunk_lambda", "nan"], "--circle_chunk_lambda"),
    (["--trainfunc", "circle", "--circle_stage_margins", "0.4", "nan"], "--circle_stage_margins"),
    (["--trainfunc", "aamsoftmax", "--aam_initial_margin", "inf"], "--aam_initial_margin"),
    (["--trainfunc", "cel", "--cel_t", "nan"], "--cel_t"),
    (["--scheduler", "sgdr", "--sgdr_min_lr", "nan"], "--sgdr_min_lr"),
])
def test_component_float_options_are_checked(argv, name):
    assert parse_error(["--model", "ResNetSE34L", *argv]).startswith(f"{name} must be")


def test_a_new_component_float_option_is_covered_without_a_list(monkeypatch):
    sgd = importlib.import_module("optimizer.sgd")

    def add_arguments(group):
        group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    monkeypatch.setattr(sgd, "add_arguments", add_arguments, raising=False)
    message = parse_error(REQUIRED + ["--optimizer", "sgd", "--momentum", "nan"])
    assert message == "--momentum must be a finite number, got nan"


def test_main_reports_non_finite_lr_once_and_touches_nothing(tmp_path, corpus, caplog):
    save_path = tmp_path / "exp"
    save_path.mkdir()
    (save_path / "options.yaml").write_text("batch_size: 3\n")
    before = snapshot(save_path)
    code, errors = run_main(train_argv(corpus, save_path, lr="nan"), caplog)
    assert code == 2
    assert errors == ["--lr must be a finite number, got nan"]
    assert snapshot(save_path) == before


# ------------------------------------------------------------------ A: ranges

@pytest.mark.parametrize("argv, message, edge", [
    (["--lr_decay", "-1"], "--lr_decay must lie in (0, 1]", ["--lr_decay", "1"]),
    (["--lr_decay", "0"], "--lr_decay must lie in (0, 1]", ["--lr_decay", "0.001"]),
    (["--lr_decay", "1.5"], "--lr_decay must lie in (0, 1]", ["--lr_decay", "1"]),
    (["--weight_decay", "-0.1"], "--weight_decay must be 0 or more, got -0.1", ["--weight_decay", "0"]),
    (["--margin", "-0.1"], "--margin must be 0 or more, got -0.1", ["--margin", "0"]),
    (["--scale", "0"], "--scale must be positive, got 0", ["--scale", "0.5"]),
    (TRIPLET + ["--hard_prob", "1.5"], "--hard_prob must lie in [0, 1]", TRIPLET + ["--hard_prob", "1"]),
    (TRIPLET + ["--hard_prob", "-0.5"], "--hard_prob must lie in [0, 1]", TRIPLET + ["--hard_prob", "0"]),
    (TRIPLET + ["--hard_rank", "0"], "--hard_rank must be at least 1, got 0", TRIPLET + ["--hard_rank", "1"]),
    (["--dcf_c_miss", "0"], "--dcf_c_miss must be positive", ["--dcf_c_miss", "10"]),
    (["--dcf_c_fa", "-1"], "--dcf_c_fa must be positive", ["--dcf_c_fa", "0.1"]),
    (["--seed", "-1"], "--seed must be 0 or more, got -1", ["--seed", "0"]),
    (["--aug_fraction", "1.5"], "--aug_fraction must lie in [0, 1]", ["--aug_fraction", "0"]),
    (["--aug_snr_noise", "15", "0"], "--aug_snr_noise 15 0: the first value is the low end",
     ["--aug_snr_noise", "5", "5"]),
    (["--aug_babble", "7", "3"], "--aug_babble 7 3: the first value is the low end",
     ["--aug_babble", "3", "3"]),
    (["--aug_babble", "0", "3"], "--aug_babble 0 3: babble sums at least 1 speech file",
     ["--aug_babble", "1", "3"]),
])
def test_out_of_range_numbers(argv, message, edge):
    assert parse_error(REQUIRED + argv).startswith(message)
    parse_options(REQUIRED + edge)                 # the range's edge is still accepted


def test_lr_decay_message_names_value_and_range():
    assert parse_error(REQUIRED + ["--lr_decay", "-1"]) == (
        "--lr_decay must lie in (0, 1] (the factor on the learning rate at each steplr step; "
        "1 keeps it), got -1")


def test_range_checked_in_yaml(config):
    assert parse_error(REQUIRED + ["--config", config("lr_decay: -1\n")]).startswith("--lr_decay")


# ------------------------------------------------------------------ A: --aug_probs

ZERO = "--aug_probs 0 0 0 0 0: every probability is 0, so nothing is augmented (give at least one " \
       "positive weight, or drop --augment)"
NEGATIVE = "--aug_probs: -0.1 is negative (weights must be 0 or more)"


def test_all_zero_aug_probs_with_augment():
    zeros = ["--aug_probs", "0", "0", "0", "0", "0"]
    assert parse_error(REQUIRED + ["--augment"] + zeros) == ZERO
    assert parse_options(REQUIRED + zeros).aug_probs == [0.0] * 5     # unused without --augment


def test_all_zero_aug_probs_from_yaml(config):
    text = "augment: true\naug_probs: [0, 0, 0, 0, 0]\n"
    assert parse_error(REQUIRED + ["--config", config(text)]) == ZERO


@pytest.mark.parametrize("flags", [[], ["--augment"]])
def test_negative_aug_prob_is_always_an_error(flags):
    assert parse_error(REQUIRED + flags + ["--aug_probs", "0.2", "-0.1", "0.2", "0.2", "0.2"]) == NEGATIVE


def test_main_reports_zero_aug_probs_once_and_touches_nothing(tmp_path, corpus, caplog):
    save_path = tmp_path / "exp"
    argv = train_argv(corpus, save_path, flags=["augment"]) + ["--aug_probs", "0", "0", "0", "0", "0"]
    code, errors = run_main(argv, caplog)
    assert (code, errors) == (2, [ZERO])
    assert snapshot(save_path) == {}


def test_planner_message_has_plain_floats():
    with pytest.raises(UserError) as err:
        augment.AugmentPlanner(None, [0.0, 0, 0, 0, 0], {}, (3, 7))
    message = str(err.value)
    assert message.startswith("--aug_probs 0 0 0 0 0:") and "np." not in message and "\n" not in message


# ------------------------------------------------------------------ B: --config not a file

def test_config_directory(tmp_path):
    assert parse_error(REQUIRED + ["--config", str(tmp_path)]) == \
        f"--config {tmp_path}: Is a directory (give a YAML file)"


@pytest.mark.parametrize("error, strerror", [
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
])
def test_config_unreadable(config, monkeypatch, error, strerror):
    path = config("lr: 0.01\n")

    def refuse(*args, **kwargs):
        raise error
    from speakernet.core import config_file
    monkeypatch.setattr(config_file, "open", refuse, raising=False)   # root can read anything
    assert parse_error(REQUIRED + ["--config", path]) == f"--config {path}: {strerror} (give a YAML file)"


def test_config_not_text(tmp_path):
    path = tmp_path / "weights.model"
    path.write_bytes(b"\x80\x02\xff\xfe binary")
    assert parse_error(REQUIRED + ["--config", str(path)]) == \
        f"--config {path}: not UTF-8 text (give a YAML file)"


def test_main_reports_config_directory(tmp_path, corpus, caplog):
    folder = tmp_path / "configs"
    folder.mkdir()
    code, errors = run_main(train_argv(corpus, tmp_path / "exp", config=folder), caplog)
    assert (code, errors) == (2, [f"--config {folder}: Is a directory (give a YAML file)"])
    assert snapshot(tmp_path / "exp") == {}


# ------------------------------------------------------------------ C: component defaults

CIRCLE = ["--model", "ResNetSE34L", "--trainfunc", "circle"]


def test_circle_uses_its_paper_margin_and_scale():
    opts = parse_options(CIRCLE)
    assert (opts.margin, opts.scale) == (0.4, 60.0)
    # ... and only circle: aamsoftmax keeps voxceleb_trainer's generic --margin 0.1 --scale 30.
    opts = parse_options(["--model", "ResNetSE34L", "--trainfunc", "aamsoftmax"])
    assert (opts.margin, opts.scale) == (0.1, 30.0)


def test_circle_chosen_in_yaml_uses_its_defaults(config):
    opts = parse_options(["--config", config("model: ResNetSE34L\ntrainfunc: circle\n")])
    assert (opts.margin, opts.scale) == (0.4, 60.0)


def test_command_line_beats_component_default():
    opts = parse_options(CIRCLE + ["--margin", "0.2"])
    assert (opts.margin, opts.scale) == (0.2, 60.0)


def test_yaml_beats_component_default(config):
    opts = parse_options(CIRCLE + ["--config", config("margin: 0.3\n")])
    assert (opts.margin, opts.scale) == (0.3, 60.0)
    opts = parse_options(CIRCLE + ["--config", config("margin: 0.3\n"), "--margin", "0.25"])
    assert opts.margin == 0.25


# Encoders and objectives of voxceleb_trainer: old command lines and checkpoints rely on the
# generic defaults reaching them, so they keep them; ECAPA-TDNN (not in voxceleb_trainer's
# trainer defaults) gets its paper's.
VOXCELEB_TRAINER = [("ResNetSE34L", "softmax"), ("ResNetSE34V2", "amsoftmax"), ("VGGVox", "aamsoftmax"),
                    ("ResNetSE34L", "triplet"), ("ResNetSE34L", "angleproto"), ("ResNetSE34L", "ge2e"),
                    ("ResNetSE34L", "proto"), ("ResNetSE34L", "softmaxproto")]


def test_ecapa_uses_its_paper_defaults_and_voxceleb_trainer_components_do_not():
    opts = parse_options(["--model", "ECAPA_TDNN", "--trainfunc", "aamsoftmax"])
    assert (opts.nOut, opts.n_mels, opts.log_input, opts.encoder_type) == (192, 80, True, "ASP")
    opts = parse_options(["--model", "ECAPA_TDNN", "--trainfunc", "aamsoftmax", "--nOut", "256",
                          "--n_mels", "64", "--no-log_input"])
    assert (opts.nOut, opts.n_mels, opts.log_input) == (256, 64, False)
    for model, trainfunc in VOXCELEB_TRAINER:
        opts = parse_options(["--model", model, "--trainfunc", trainfunc, "--encoder_type", "ASP"])
        assert (opts.nOut, opts.n_mels, opts.log_input, opts.margin, opts.scale, opts.lr) == \
            (512, 40, False, 0.1, 30.0, 0.001), (model, trainfunc)


@pytest.mark.parametrize("declared, fragment", [
    ({"marginn": 0.4}, "loss/circle.py OPTION_DEFAULTS: unknown option 'marginn'; did you mean 'margin'?"),
    ({"margin": "wide"}, "loss/circle.py OPTION_DEFAULTS: 'margin' expects float"),
    ({"model": "ECAPA_TDNN"}, "loss/circle.py OPTION_DEFAULTS: 'model' chooses components"),
    ([("margin", 0.4)], "loss/circle.py OPTION_DEFAULTS: must be a dict"),
])
def test_bad_option_defaults_name_the_component(monkeypatch, declared, fragment):
    monkeypatch.setattr(plugins.load_module("loss", "circle"), "OPTION_DEFAULTS", declared)
    assert parse_error(CIRCLE).startswith(fragment)


def test_component_defaults_are_range_checked(monkeypatch):
    monkeypatch.setattr(plugins.load_module("loss", "circle"), "OPTION_DEFAULTS", {"scale": 0.0})
    assert parse_error(CIRCLE) == "--scale must be positive, got 0"


def test_every_declared_component_default_is_valid():
    declared = set()
    for kind in ("models", "loss", "optimizer", "scheduler"):
        for name in plugins.available(kind):
            module = plugins.load_module(kind, name)
            if hasattr(module, "OPTION_DEFAULTS"):
                parser = options.build_parser()
                if hasattr(module, "add_arguments"):
                    module.add_arguments(parser)
                assert options._component_defaults(parser, [(f"{kind}/{name}.py", module)])
                declared.add(f"{kind}/{name}.py")
    assert {"loss/circle.py", "models/ECAPA_TDNN.py"} <= declared


# ------------------------------------------------------------------ D: duplicate YAML keys

def test_duplicate_yaml_key_warns_with_both_lines(config, caplog):
    with caplog.at_level(logging.WARNING, logger="options"):
        options.load_config(config("lr: 0.1\nbatch_size: 3\naug_probs: [0.2, 0.2, 0.2, 0.2, 0.2]\n"))
    assert not caplog.records                      # no duplicates, no warning
    path = config("lr: 0.1\nbatch_size: 3\nmax_frames: 100\nlr: 0.01\n", name="dup.yaml")
    with caplog.at_level(logging.WARNING, logger="options"):
        opts = parse_options(REQUIRED + ["--config", path])
    assert opts.lr == 0.01
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path}:4: 'lr' is also set on line 1; the value on line 4 (0.01) is used"]


def test_key_set_three_times_names_every_line(config, caplog):
    path = config("model: ResNetSE34L\nmodel: VGGVox\ntrainfunc: angleproto\nmodel: ResNetSE34V2\n")
    with caplog.at_level(logging.WARNING, logger="options"):
        assert options.load_config(path)["model"] == "ResNetSE34V2"
    assert f"{path}:4: 'model' is also set on lines 1 and 2; the value on line 4 ('ResNetSE34V2') " \
           f"is used" in caplog.messages



# ------------------------------------------------------------------ E: --verify takes its model from the checkpoint

def test_verify_needs_no_model_or_trainfunc():
    opts = parse_options(["--verify", "a.wav", "b.wav", "--initial_model", "m.model"])
    assert opts.verify == ["a.wav", "b.wav"] and opts.initial_model == "m.model"


def test_verify_without_initial_model_is_one_line():
    message = parse_error(["--verify", "a.wav", "b.wav"])
    assert message.startswith("--verify needs --initial_model CKPT") and "\n" not in message


def test_other_modes_still_need_model_and_trainfunc():
    assert parse_error(["--initial_model", "m.model"]).startswith("--trainfunc is required")
    assert parse_error(["--trainfunc", "angleproto"]).startswith("--model is required")
