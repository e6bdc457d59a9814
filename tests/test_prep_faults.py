"""data_prep.py --check and --make_list: NaN/Inf audio, paths with spaces, byte-order marks,
lists that are not UTF-8 and folder names that look like glob patterns."""
import numpy as np
import pytest
import soundfile

import data_prep
from conftest import SR, tone, write_wav
from speakernet.prep import lists

FIX = "(re-export the file; NaN/Inf samples poison training)"


def run(*argv):
    """data_prep.main; None, or the message of its SystemExit (a non-zero exit status)."""
    try:
        data_prep.main([str(a) for a in argv])
    except SystemExit as err:
        assert err.code not in (0, None)
        return str(err)
    return None


def samples(seed=0, n=SR // 2):
    return tone(np.random.default_rng(seed), n, 220)


@pytest.fixture
def poisoned(tmp_path):
    """A tree with one NaN and one Inf float file, plus a clean float and a clean PCM file."""
    root = tmp_path / "data"
    nan, inf = samples(0), samples(1)
    nan[[100, 2000, 7000]] = np.nan
    inf[50] = np.inf
    write_wav(root / "a/v/nan.wav", nan, subtype="FLOAT")
    write_wav(root / "b/v/inf.wav", inf, subtype="FLOAT")
    write_wav(root / "c/v/float.wav", samples(2), subtype="FLOAT")
    write_wav(root / "d/v/pcm.wav", samples(3))
    return root


def test_check_reports_non_finite_samples(poisoned, capsys, monkeypatch):
    read = []
    blocks = soundfile.blocks
    monkeypatch.setattr(soundfile, "blocks", lambda path, **kw: read.append(path) or blocks(path, **kw))
    assert "2 problems" in run("--check", poisoned)
    out = capsys.readouterr().out
    assert "2 non-finite samples, e.g.:" in out and "2 usable" in out
    assert f"nan.wav: 3 NaN/Inf samples, the first at sample 100 {FIX}" in out
    assert f"inf.wav: 1 NaN/Inf samples, the first at sample 50 {FIX}" in out
    assert not any(p.endswith("pcm.wav") for p in read)        # integer PCM is not read
    listed = poisoned.parent / "train.txt"
    listed.write_text("a a/v/nan.wav\nd d/v/pcm.wav\n")
    assert "1 problems" in run("--check", poisoned, "--list", listed)
    assert "a/v/nan.wav (line 1): 3 NaN/Inf samples" in capsys.readouterr().out


def test_non_finite_index_counts_across_blocks(tmp_path):
    audio = samples()
    audio[[1000, 1001, 5000]] = [np.inf, -np.inf, np.nan]
    path = write_wav(tmp_path / "x.wav", audio, subtype="DOUBLE")
    assert lists.non_finite(str(path), blocksize=64) == f"3 NaN/Inf samples, the first at sample 1000 {FIX}"


def test_make_list_refuses_paths_with_whitespace(tmp_path):
    root = tmp_path / "vox"
    write_wav(root / "id1/vid/ok.wav", samples())
    write_wav(root / "id1/my vid/1.wav", samples())
    write_wav(root / "id2/vid/a b.wav", samples())
    out = tmp_path / "train_list.txt"
    err = run("--make_list", root, "--list_out", out)
    assert err == (f"--make_list {root}: 2 file paths contain whitespace, the first 'id1/my vid/1.wav' "
                   f"(rename those files and folders without spaces)")
    assert not out.exists()
    out.write_text("keep me\n")
    assert "whitespace" in run("--make_list", root, "--list_out", out, "--overwrite")
    assert out.read_text() == "keep me\n"


def test_byte_order_mark_is_not_part_of_the_first_line(tmp_path, capsys):
    root = tmp_path / "data"
    write_wav(root / "a/v/1.wav", samples())
    write_wav(root / "a/v/2.wav", samples(1))
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/v/1.wav a/v/2.wav\n", encoding="utf-8-sig")
    assert run("--check", root, "--list", trials) is None
    assert "2 usable" in capsys.readouterr().out
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a/v/1.wav a/v/2.wav\n", encoding="utf-8-sig")
    assert lists.list_entries(pairs, "auto") == ("trial", [(1, "a/v/1.wav"), (1, "a/v/2.wav")], [])


def test_list_that_is_not_utf8_is_one_error(tmp_path):
    (tmp_path / "data").mkdir()
    bad = tmp_path / "list.txt"
    bad.write_bytes(b"spk a/v/1.wav\nspk \xff\xfe.wav\n")
    assert run("--check", tmp_path / "data", "--list", bad) == (
        f"--list {bad}: byte 18 is not UTF-8 (save the list as UTF-8 text)")


def test_check_of_a_folder_named_like_a_glob_pattern(tmp_path):
    root = tmp_path / "data[1]"
    write_wav(root / "a/v/1.wav", samples())
    (root / "a/v/2.wav").write_bytes(b"RIFF not audio")
    assert "1 problems" in (run("--check", root) or "")
