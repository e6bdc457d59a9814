"""Pseudo-label rounds (speakernet/tools/pseudo_rounds.py, speakernet/data/pseudo_labels.py): one command
runs a self-supervised first stage and rounds of clustering + supervised training; true labels
reach only the diagnostics; a rerun skips what is finished; bad inputs stop with one line."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch

import trainSpeakerNet
from conftest import make_corpus, train_argv
from speakernet.core import checkpoint
from speakernet.data import clustering, pseudo_labels, spectral
from speakernet.core.errors import OptionError

ROUND = "trainfunc=aamsoftmax nPerSpeaker=1 batch_size=4 max_epoch=1 margin=0.2 scale=30"


def pipeline_argv(corpus, save, **overrides):
    values = dict(trainfunc="cel", batch_size=4, max_epoch=1, nPerSpeaker=2, nOut=16,
                  pseudo_rounds=1, pseudo_clusters=6, pseudo_round_options=ROUND)
    values.update(overrides)
    return train_argv(corpus, save, **values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("pseudo") / "corpus", train_speakers=6, train_utts=6)


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("pseudo_run") / "run"
    assert trainSpeakerNet.main(pipeline_argv(corpus, save)) == 0
    return save


def relabelled_list(corpus, path, names):
    path.write_text("".join(f"{name} {rel}\n" for name, (_, rel) in zip(names, corpus.train_lines)))
    return path


def test_round_options_read_as_name_value_pairs():
    assert pseudo_labels.round_argv("trainfunc=aamsoftmax augment=false specaugment=true "
                                    "aug_probs=0 0.5 0.5 0 0") == [
        "--trainfunc", "aamsoftmax", "--no-augment", "--specaugment",
        "--aug_probs", "0", "0.5", "0.5", "0", "0"]
    with pytest.raises(OptionError, match="name=value"):
        pseudo_labels.round_argv("aamsoftmax max_epoch=4")


def test_the_pipeline_writes_each_stage_and_its_diagnostics(finished, corpus):
    record = {s["name"]: s for s in json.loads((finished / "pipeline.json").read_text())["stages"]}
    assert list(record) == ["stage1", "round1"]
    assert record["stage1"]["trainfunc"] == "cel" and record["round1"]["trainfunc"] == "aamsoftmax"
    for stage in record.values():
        assert (finished / stage["name"] / "model" / "model000000001.model").exists()
        assert 0.0 <= stage["eer"] <= 100.0
    # The round's list: voxceleb_trainer format, only the kept utterances, K' pseudo-speakers.
    lines = [line.split() for line in (finished / "round1" / "pseudo_list.txt").read_text().splitlines()]
    paths = [rel for _, rel in corpus.train_lines]
    assert all(len(cols) == 2 and cols[1] in paths for cols in lines)
    assert len({cols[0] for cols in lines}) == record["round1"]["kept_clusters"]
    assert len(lines) == record["round1"]["kept"]
    # Purity of the kept utterances, recomputed here from the list and the true speakers.
    truth = dict((rel, spk) for spk, rel in corpus.train_lines)
    clusters = {}
    for label, rel in lines:
        clusters.setdefault(label, []).append(truth[rel])
    majority = sum(max(members.count(s) for s in set(members)) for members in clusters.values())
    assert record["round1"]["purity_kept"] == pytest.approx(majority / len(lines))
    # The round's options.yaml: the pipeline's list, K and starting model.
    options = (finished / "round1" / "options.yaml").read_text()
    assert "nClasses: %d" % record["round1"]["kept_clusters"] in options
    assert "stage1/model/model000000001.model" in options
    table = (finished / "pipeline.md").read_text()
    assert "| stage1 | cel |" in table and "| round1 | aamsoftmax |" in table


def test_true_labels_reach_neither_the_clustering_nor_the_training(finished, corpus, tmp_path):
    # The same paths with the speaker column permuted: every training input is unchanged,
    # so the lists and the weights must be identical; only the diagnostics may differ.
    names = [spk for spk, _ in corpus.train_lines]
    shuffled = list(np.random.default_rng(1).permutation(names))
    listed = relabelled_list(corpus, tmp_path / "shuffled_list.txt", shuffled)
    save = tmp_path / "run"
    assert trainSpeakerNet.main(pipeline_argv(corpus, save, train_list=listed)) == 0
    assert ((save / "round1" / "pseudo_list.txt").read_text()
            == (finished / "round1" / "pseudo_list.txt").read_text())
    ours = checkpoint.load_file(save / "round1" / "model" / "model000000001.model")["model"]
    theirs = checkpoint.load_file(finished / "round1" / "model" / "model000000001.model")["model"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    first = json.loads((finished / "round1" / "clusters.json").read_text())
    second = json.loads((save / "round1" / "clusters.json").read_text())
    assert first["purity_all"] != second["purity_all"]          # the diagnostics did see them


def test_a_rerun_skips_finished_stages_and_a_failed_round_resumes(corpus, tmp_path, monkeypatch):
    save = tmp_path / "run"
    argv = pipeline_argv(corpus, save, pseudo_rounds=2)
    real = pseudo_labels.pseudo_labels
    calls = []

    def failing_in_round_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(pseudo_labels, "pseudo_labels", failing_in_round_2)
    assert trainSpeakerNet.main(argv) == 130
    kept = {p: p.stat().st_mtime_ns for p in save.glob("*/model/*.model")}
    assert {p.parent.parent.name for p in kept} == {"stage1", "round1"}
    assert not (save / "round2" / "pseudo_list.txt").exists()
    monkeypatch.setattr(pseudo_labels, "pseudo_labels", real)
    assert trainSpeakerNet.main(argv) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())     # not retrained
    stages = json.loads((save / "pipeline.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["stage1", "round1", "round2"]


@pytest.mark.parametrize("method", ["kmeans", "spectral"])
def test_a_round_starts_from_a_given_checkpoint(finished, corpus, tmp_path, method):
    save = tmp_path / "run"
    start = finished / "round1" / "model" / "model000000001.model"
    assert trainSpeakerNet.main(pipeline_argv(corpus, save, pseudo_from=start, pseudo_method=method)) == 0
    assert not (save / "stage1").exists()
    assert str(start) in (save / "round1" / "options.yaml").read_text()
    assert json.loads((save / "round1" / "clusters.json").read_text())["method"] == method


def test_spectral_clustering_refuses_a_list_above_its_limit(corpus, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(spectral, "SPECTRAL_LIMIT", 30)
    with caplog.at_level(logging.ERROR):
        assert trainSpeakerNet.main(pipeline_argv(corpus, tmp_path / "run", pseudo_method="spectral")) == 2
    assert "up to 30 utterances" in caplog.records[-1].getMessage()
    assert "use --pseudo_method kmeans" in caplog.records[-1].getMessage()
    assert not (tmp_path / "run" / "stage1").exists()


@pytest.mark.parametrize("overrides, words", [
    (dict(pseudo_clusters=19), "K=19 pseudo-speakers cannot be formed from the 36 utterances"),
    (dict(pseudo_k_candidates="1"), "K=1"),
    (dict(pseudo_keep=0), "--pseudo_keep must lie in (0, 1]"),
    (dict(pseudo_round_options="aamsoftmax"), "write each option as name=value"),
    (dict(pseudo_round_options="trainfunc=aamsofmax"), "aamsofmax"),
])
def test_bad_settings_stop_before_anything_is_trained(corpus, tmp_path, caplog, overrides, words):
    save = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        assert trainSpeakerNet.main(pipeline_argv(corpus, save, **overrides)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0]
    assert not (save / "stage1").exists()


def test_a_checkpoint_of_another_architecture_is_named(finished, corpus, tmp_path, caplog):
    start = finished / "stage1" / "model" / "model000000001.model"
    with caplog.at_level(logging.ERROR):
        code = trainSpeakerNet.main(pipeline_argv(corpus, tmp_path / "run", pseudo_from=start,
                                                  model="VGGVox"))
    assert code == 2
    assert "holds a ResNetSE34L encoder but --model is VGGVox" in caplog.records[-1].getMessage()


def test_a_diverged_model_stops_the_round_and_keeps_what_was_written(finished, corpus, tmp_path, caplog):
    state = checkpoint.load_file(finished / "round1" / "model" / "model000000001.model")
    key = next(k for k, v in state["model"].items() if k.startswith("encoder.") and v.is_floating_point())
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    broken = tmp_path / "broken.model"
    torch.save(state, broken)
    save = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        assert trainSpeakerNet.main(pipeline_argv(corpus, save, pseudo_from=broken)) == 3
    assert "non-finite embeddings" in caplog.records[-1].getMessage()
    assert (save / "unlabelled_list.txt").exists()


def test_k_is_chosen_when_not_given():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16))
    x = np.concatenate([c + 0.05 * rng.standard_normal((20, 16)) for c in centres]).astype(np.float32)

    class Options:
        pseudo_clusters, pseudo_k_candidates = 0, [2, 5, 10]
    k, scores = pseudo_labels.choose_clusters(x, Options, seed=0)
    assert k == 5 and set(scores) == {2, 5, 10}
    assert pseudo_labels.default_candidates(4800)[0] == 48 and pseudo_labels.default_candidates(4800)[-1] == 960


def test_the_list_keeps_only_confident_members():
    rng = np.random.default_rng(0)
    x = np.concatenate([c + 0.3 * rng.standard_normal((10, 8)) for c in 3 * np.eye(8)[:4]]).astype(np.float32)
    labels, clusters = pseudo_labels.pseudo_labels(x, 4, 0.5, seed=0)
    kept = labels >= 0
    assert kept.sum() == 20
    mask = clustering.keep_confident(clusters, 0.5, min_size=2)
    assert np.array_equal(kept, mask)


@pytest.mark.parametrize("start, expected", [("previous", "round1"), ("first", "stage1")])
def test_round_two_starts_from_the_chosen_model(corpus, tmp_path, caplog, start, expected):
    """Round 2 clusters with round 1's model either way; its training starts from round 1's
    weights (previous) or from the first stage's (first)."""
    save = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert trainSpeakerNet.main(pipeline_argv(corpus, save, pseudo_rounds=2, pseudo_start=start)) == 0
    assert f"round 2: embedding 36 utterances with {save / 'round1' / 'model' / 'model000000001.model'}" \
        in caplog.text
    options = (save / "round2" / "options.yaml").read_text()
    assert f"initial_model: {save / expected / 'model' / 'model000000001.model'}" in options
