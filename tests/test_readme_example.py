"""The "Using a trained model" Python example of docs/using-a-model.md, run verbatim on a trained run's best.model
(the demo's layout: exps/demo/model/best.model, with a.wav, b.wav, b.flac and c.wav beside it)."""
import re
from pathlib import Path

import soundfile
import torch

import trainSpeakerNet
from conftest import SR, make_corpus, train_argv

README = Path(__file__).resolve().parents[1] / "docs" / "using-a-model.md"


def readme_example():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using a trained model", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", train_speakers=4, train_utts=3, test_speakers=3, test_utts=2)
    monkeypatch.chdir(tmp_path)
    assert trainSpeakerNet.main(train_argv(corpus, "exps/demo", max_epoch=1)) == 0
    assert Path("exps/demo/model/best.model").exists()
    files = [corpus.root / f for f in corpus.test_files]
    for name, source in (("a.wav", files[0]), ("b.wav", files[-1]), ("c.wav", files[1])):
        Path(name).write_bytes(source.read_bytes())
    audio, rate = soundfile.read(files[-1], dtype="float32")
    soundfile.write("b.flac", audio, rate)
    namespace = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    embedder, e = namespace["embedder"], namespace["e"]
    assert e.dim() == 1 and namespace["E"].shape == (3, e.shape[0])
    # b.flac holds b.wav's samples: the same embedding; c.wav as an array: the file's.
    assert torch.allclose(namespace["E"][1], embedder.embed("b.wav"), atol=1e-5)
    assert torch.allclose(namespace["E"][2], embedder.embed("c.wav"), atol=1e-5)
    a, b = embedder.embed("a.wav"), embedder.embed("b.wav")
    assert abs(namespace["s"] - float(a @ b)) < 1e-5
    decision = namespace["decision"]
    assert decision.score == namespace["s"] and isinstance(decision.accept, bool)
    assert SR == rate
