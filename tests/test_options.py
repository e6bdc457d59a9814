"""options.parse_options: defaults < YAML < command line, typed YAML, helpful errors."""
import importlib

import pytest

from speakernet.run import options
from speakernet.run import plugins
from speakernet.run.options import OptionError, parse_options

REQUIRED = ["--model", "ResNetSE34L", "--trainfunc", "angleproto"]


# ------------------------------------------------------------------ precedence

def test_default_when_neither_yaml_nor_cli():
    assert parse_options(REQUIRED).batch_size == 200


def test_yaml_overrides_default(config):
    assert parse_options(REQUIRED + ["--config", config("batch_size: 7\n")]).batch_size == 7


@pytest.mark.parametrize("order", ["config_first", "config_last"])
def test_cli_overrides_yaml(config, order):
    cfg = ["--config", config("batch_size: 7\nmax_frames: 100\n")]
    cli = ["--batch_size", "9"]
    argv = REQUIRED + (cfg + cli if order == "config_first" else cli + cfg)
    opts = parse_options(argv)
    assert opts.batch_size == 9          # command line wins, wherever --config sits
    assert opts.max_frames == 100        # YAML still applies to what the CLI leaves alone


def test_model_and_trainfunc_from_yaml_only(config):
    opts = parse_options(["--config", config("model: ResNetSE34L\ntrainfunc: angleproto\nnOut: 256\n")])
    assert (opts.model, opts.trainfunc, opts.nOut) == ("ResNetSE34L", "angleproto", 256)


def test_cli_component_overrides_bad_yaml_component(config):
    # A YAML typo is harmless when the command line names the component.
    opts = parse_options(["--config", config("model: NoSuchModel\ntrainfunc: angleproto\n"),
                          "--model", "ResNetSE34L"])
    assert opts.model == "ResNetSE34L"


# ------------------------------------------------------------------ boolean flags

def test_boolean_default_false():
    assert parse_options(REQUIRED).augment is False


def test_boolean_flag_takes_no_value():
    assert parse_options(REQUIRED + ["--augment"]).augment is True
    with pytest.raises(SystemExit):
        parse_options(REQUIRED + ["--augment", "true"])     # 'true' is a stray argument


def test_yaml_true_then_cli_no_flag(config):
    cfg = ["--config", config("augment: true\nlog_input: true\n")]
    assert parse_options(REQUIRED + cfg).augment is True
    opts = parse_options(REQUIRED + cfg + ["--no-augment"])
    assert opts.augment is False
    assert opts.log_input is True


def test_yaml_false_then_cli_flag(config):
    opts = parse_options(REQUIRED + ["--config", config("augment: false\n"), "--augment"])
    assert opts.augment is True


# ------------------------------------------------------------------ YAML keys and types

def test_unknown_yaml_key_names_key_and_nearest(config):
    with pytest.raises(OptionError) as err:
        parse_options(REQUIRED + ["--config", config("bach_size: 7\n")])
    message = str(err.value)
    assert "'bach_size'" in message
    assert "batch_size" in message.replace("bach_size", "")


def test_unknown_yaml_key_names_nearest_for_other_key(config):
    with pytest.raises(OptionError) as err:
        parse_options(REQUIRED + ["--config", config("max_frame: 100\n")])
    assert "max_frame'" in str(err.value) and "'max_frames'" in str(err.value)


@pytest.mark.parametrize("text", [
    'batch_size: "abc"\n',
    "batch_size: [1, 2]\n",
    "batch_size: true\n",
    "lr: fast\n",
    "augment: 3\n",
    'augment: "yes"\n',
    "model: [ResNetSE34L]\n",
])
def test_wrong_yaml_type_is_option_error(config, text):
    key = text.split(":")[0]
    with pytest.raises(OptionError) as err:
        parse_options(REQUIRED + ["--config", config(text)])
    assert key in str(err.value)


def test_yaml_numeric_string_is_converted(config):
    opts = parse_options(REQUIRED + ["--config", config('batch_size: "9"\nlr: 1.0e-2\n')])
    assert opts.batch_size == 9 and isinstance(opts.batch_size, int)
    assert opts.lr == pytest.approx(0.01)


def test_yaml_float_for_int_option_is_rejected(config):
    with pytest.raises(OptionError):
        parse_options(REQUIRED + ["--config", config("batch_size: 7.5\n")])


def test_yaml_null_for_int_option_is_option_error(config):
    with pytest.raises(OptionError):
        parse_options(REQUIRED + ["--config", config("batch_size:\n")])


def test_yaml_not_a_mapping(config):
    with pytest.raises(OptionError):
        parse_options(REQUIRED + ["--config", config("- batch_size\n- 7\n")])


def test_missing_config_file(tmp_path):
    with pytest.raises(OptionError) as err:
        parse_options(REQUIRED + ["--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in str(err.value)


# ------------------------------------------------------------------ component names

@pytest.mark.parametrize("argv, wrong, nearest", [
    (["--model", "ResnetSE34L", "--trainfunc", "angleproto"], "ResnetSE34L", "ResNetSE34L"),
    (["--model", "ResNetSE34L", "--trainfunc", "angleprot"], "angleprot", "angleproto"),
    (["--model", "ResNetSE34L", "--trainfunc", "softmx"], "softmx", "softmax"),
])
def test_unknown_component_names_nearest(argv, wrong, nearest):
    with pytest.raises(plugins.UnknownComponentError) as err:
        parse_options(argv)
    message = str(err.value)
    assert f"'{wrong}'" in message
    assert f"Did you mean '{nearest}'" in message


def test_unknown_component_in_yaml_names_nearest(config):
    with pytest.raises(plugins.UnknownComponentError) as err:
        parse_options(["--config", config("model: ResnetSE34L\ntrainfunc: angleproto\n")])
    assert "Did you mean 'ResNetSE34L'" in str(err.value)


def _give_sgd_an_option(monkeypatch):
    sgd = importlib.import_module("optimizer.sgd")

    def add_arguments(group):
        group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    monkeypatch.setattr(sgd, "add_arguments", add_arguments, raising=False)


def test_component_option_with_component_on_cli(config, monkeypatch):
    _give_sgd_an_option(monkeypatch)
    opts = parse_options(REQUIRED + ["--optimizer", "sgd", "--config", config("momentum: 0.8\n")])
    assert opts.momentum == pytest.approx(0.8)


def test_component_option_with_component_in_yaml(config, monkeypatch):
    _give_sgd_an_option(monkeypatch)
    opts = parse_options(REQUIRED + ["--config", config("optimizer: sgd\nmomentum: 0.8\n")])
    assert opts.momentum == pytest.approx(0.8)


# ------------------------------------------------------------------ ranges

@pytest.mark.parametrize("extra, name", [
    (["--batch_size", "0"], "batch_size"),
    (["--eval_frames", "-1"], "eval_frames"),
    (["--max_frames", "0"], "max_frames"),
    (["--num_eval", "0"], "num_eval"),
    (["--nOut", "-5"], "nOut"),
    (["--lr", "0"], "lr"),
    (["--nDataLoaderThread", "-1"], "nDataLoaderThread"),
    (["--device", "tpu"], "device"),
])
def test_out_of_range_values(extra, name):
    with pytest.raises(OptionError) as err:
        parse_options(REQUIRED + extra)
    assert name in str(err.value)


def test_probability_out_of_range_is_a_usage_error(capsys):
    # Typed on the command line, argparse reports it with the usage line and exit status 2.
    with pytest.raises(SystemExit) as err:
        parse_options(REQUIRED + ["--dcf_p_target", "0.05,1.5"])
    assert err.value.code == 2
    assert "--dcf_p_target" in capsys.readouterr().err


def test_out_of_range_from_yaml(config):
    with pytest.raises(OptionError) as err:
        parse_options(REQUIRED + ["--config", config("batch_size: 0\n")])
    assert "batch_size" in str(err.value)


def test_eval_frames_zero_is_allowed():
    assert parse_options(REQUIRED + ["--eval_frames", "0"]).eval_frames == 0


@pytest.mark.parametrize("argv, name", [
    (["--trainfunc", "angleproto"], "--model"),
    (["--model", "ResNetSE34L"], "--trainfunc"),
])
def test_required_components(argv, name):
    with pytest.raises(OptionError) as err:
        parse_options(argv)
    assert name in str(err.value)


# ------------------------------------------------------------------ saved options

def test_saved_options_reload_identically(tmp_path):
    opts = parse_options(REQUIRED + ["--batch_size", "9", "--augment", "--lr", "0.01"])
    path = tmp_path / "options.yaml"
    options.save_options(opts, path)
    again = parse_options(["--config", str(path)])
    expected = {k: v for k, v in vars(opts).items() if k != "config"}
    assert {k: v for k, v in vars(again).items() if k != "config"} == expected


def test_each_component_is_built_with_its_own_options_only():
    """Not the whole option bag: what the component declares, what its factory names, and for
    **kwargs factories (voxceleb_trainer's convention) the generic options of its kind."""
    from speakernet.run.options import component_values
    options = parse_options(["--model", "ResNetSE34L", "--trainfunc", "aamsoftmax", "--optimizer", "sgd",
                             "--scheduler", "warmup_exp"])
    model = component_values("models", "ResNetSE34L", options)
    loss = component_values("loss", "aamsoftmax", options)
    optimizer = component_values("optimizer", "sgd", options)
    scheduler = component_values("scheduler", "warmup_exp", options)
    assert {"nOut", "n_mels", "encoder_type", "log_input"} <= set(model)
    assert {"nOut", "nClasses", "margin", "scale", "aam_initial_margin"} <= set(loss)
    assert {"lr", "weight_decay"} <= set(optimizer) and "optimizer" not in optimizer
    assert {"lr", "warmup_epochs", "max_epoch"} <= set(scheduler) and "optimizer" not in scheduler
    everywhere = set(model) | set(loss) | set(optimizer) | set(scheduler)
    assert not {"save_path", "test_list", "musan_path", "seed", "specaugment", "ci_replicates"} & everywhere
    assert "margin" not in model and "lr" not in loss and "nOut" not in optimizer
    assert all(value == getattr(options, key) for part in (model, loss, optimizer, scheduler)
               for key, value in part.items())
