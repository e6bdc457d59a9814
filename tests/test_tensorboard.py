"""--tensorboard: the event files hold what metrics.jsonl holds, at one step per figure across a
resume, with DET images and a projector of the test embeddings; read back with tensorboard's
own readers."""
import importlib
import logging
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.projector import ProjectorConfig

import trainSpeakerNet
from conftest import make_corpus, snapshot, train_argv
from speakernet.run import run_log, tracking


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Epochs 1-2 into one save_path; epoch 2's checkpoint is then lost (a stop after epoch 2
    was logged but before its checkpoint was kept), and the same command with max_epoch 3
    resumes from epoch 1: epochs 2 and 3 are logged again."""
    base = tmp_path_factory.mktemp("tb")
    # 4 speakers x 2 utterances, batch 2 of 2 views: two steps per epoch. Test files named
    # speaker/file under --test_path, as VoxCeleb's.
    corpus = make_corpus(base / "corpus", train_speakers=4, train_utts=2, test_speakers=2, test_utts=2)
    corpus.test_list.write_text(corpus.test_list.read_text().replace("test/", ""))
    save = base / "run"
    argv = train_argv(corpus, save, flags=("tensorboard",), batch_size=2, test_path=corpus.root / "test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking, "STEP_INTERVAL", 1)
        first = trainSpeakerNet.main(argv + ["--max_epoch", "2"])
        (save / "model" / "model000000002.model").unlink()
        second = trainSpeakerNet.main(argv + ["--max_epoch", "3"])
    events = EventAccumulator(str(save / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {"codes": (first, second), "save": save, "events": events,
            "records": run_log.read_metrics(save / "metrics.jsonl")}


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_both_runs_succeed(run):
    assert run["codes"] == (0, 0)


def test_no_step_is_logged_twice_across_the_resume(run):
    events = run["events"]
    for tag in events.Tags()["scalars"] + events.Tags()["images"]:
        items = events.Scalars(tag) if tag in events.Tags()["scalars"] else events.Images(tag)
        steps = [e.step for e in items]
        assert steps == sorted(set(steps)), (tag, steps)
    assert [step for step, _ in scalars(events, "step/loss")] == [1, 2, 3, 4, 5, 6]
    assert [value for _, value in scalars(events, "train/epoch")] == [1, 2, 3]


def test_scalars_equal_the_metrics_records(run):
    events, records = run["events"], run["records"]
    latest = {record["epoch"]: record for record in records}       # a retrained epoch: the later
    assert sorted(latest) == [1, 2, 3] and len(records) == 4
    step_of = {int(value): step for step, value in scalars(events, "train/epoch")}
    for epoch, record in latest.items():
        logged = tracking.record_scalars(record)
        for key in ("loss", "lr", "val_eer/test_list", "val_min_dcf@0.05/test_list",
                    "val_min_dcf@0.01/test_list"):
            assert (key if "/" in key else f"train/{key}") in logged, key
        for tag, value in logged.items():
            assert dict(scalars(events, tag))[step_of[epoch]] == pytest.approx(value, rel=1e-6), (epoch, tag)


def test_step_losses_average_to_the_epoch_loss(run):
    events, latest = run["events"], {r["epoch"]: r for r in run["records"]}
    losses = dict(scalars(events, "step/loss"))
    step_of = {int(value): step for step, value in scalars(events, "train/epoch")}
    for epoch in (1, 2, 3):
        steps = [s for s in losses if step_of.get(epoch - 1, 0) < s <= step_of[epoch]]
        assert np.mean([losses[s] for s in steps]) == pytest.approx(latest[epoch]["loss"], rel=1e-5)
    assert {tag for tag in events.Tags()["scalars"] if tag.startswith("step/")} == {
        "step/loss", "step/metric", "step/lr", "step/data_wait", "step/utt_per_s"}


def test_every_evaluation_logs_its_det_curve(run):
    images = run["events"].Images("det/test_list")
    step_of = {int(value): step for step, value in scalars(run["events"], "train/epoch")}
    assert [image.step for image in images] == [step_of[1], step_of[2], step_of[3]]
    assert all(image.encoded_image_string.startswith(b"\x89PNG") and image.width > 100 for image in images)


def test_projector_holds_the_scored_test_embeddings_with_speakers(run):
    folder = run["save"] / "tensorboard"
    config = text_format.Parse((folder / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (entry,) = config.embeddings
    assert "epoch0003" in entry.tensor_name
    header, *rows = (folder / entry.metadata_path).read_text().splitlines()
    assert header == "speaker\tfile"
    speakers, names = zip(*(row.split("\t") for row in rows))
    assert sorted(names) == list(names) and len(names) == 4
    assert list(speakers) == [name.split("/")[0] for name in names] and len(set(speakers)) == 2
    matrix = np.loadtxt(folder / entry.tensor_path, delimiter="\t", ndmin=2)
    assert matrix.shape == (4, 32)
    row = {name: i for i, name in enumerate(names)}
    # Cosine scoring: a trial's score is the dot product of its files' embeddings.
    for line in (run["save"] / "result" / "scores_epoch0003_test_list.txt").read_text().splitlines():
        score, _, a, b = line.split()
        assert matrix[row[a]] @ matrix[row[b]] == pytest.approx(float(score), abs=1e-3), line


def test_tensorboard_folder_blocked_or_package_missing_is_one_line(corpus, tmp_path, caplog, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "tensorboard").write_text("not a folder")
    before = snapshot(blocked)
    with caplog.at_level(logging.ERROR, logger="trainSpeakerNet"):
        assert trainSpeakerNet.main(train_argv(corpus, blocked, flags=("tensorboard",), max_epoch=1)) == 2
        monkeypatch.setitem(sys.modules, "tensorboard", None)      # as if not installed
        assert trainSpeakerNet.main(train_argv(corpus, tmp_path / "missing", flags=("tensorboard",))) == 2
    first, second = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "--tensorboard" in first and "tensorboard is a file, not a folder" in first, first
    assert "--tensorboard needs the tensorboard package" in second and "pip install" in second, second
    assert snapshot(blocked) == before and not (tmp_path / "missing").exists()
    # Without the flag a run needs no tensorboard package at all (nor does importing tracking).
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    importlib.reload(tracking)
    assert trainSpeakerNet.main(train_argv(corpus, tmp_path / "off", max_epoch=1, test_interval=1)) == 0
    assert not (tmp_path / "off" / "tensorboard").exists()


class Recorded(tracking.Tracker):
    enabled = True

    def __init__(self):
        super().__init__()
        self.logged = []

    def write_scalars(self, values, step):
        self.logged.append((step, values["step/loss"]))


def test_step_loss_is_the_mean_since_the_last_logged_step_within_its_epoch(monkeypatch):
    monkeypatch.setattr(tracking, "STEP_INTERVAL", 3)
    tracker = Recorded()
    losses = {1: [1.0, 3.0], 2: [5.0, 7.0], 3: [9.0, 11.0]}        # three epochs of 2 steps
    step = 0
    for epoch, values in losses.items():
        for count in (1, 2):
            step += 1
            tracker.log_step(step, epoch, {"count": count, "loss": sum(values[:count]), "metric": 0.0}, {})
    # Step 3: epoch 2's first step; step 6: epoch 3's two steps (its sums restarted from 0).
    assert tracker.logged == [(3, 5.0), (6, 10.0)]
