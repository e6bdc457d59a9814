"""data_prep.py's real-data steps on small fake archives and trees (no network, no ffmpeg needed):
download (local HTTP server: resume with Range, MD5 mismatch, auth), concatenate, extract,
convert (fake ffmpeg on PATH), augment (MUSAN split, RIR rooms), make_list and check."""
import hashlib
import http.server
import io
import os
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data_prep  # noqa: E402

SR = 16000


def run(*argv):
    """data_prep.main; returns None or the error message of its SystemExit."""
    try:
        data_prep.main([str(a) for a in argv])
    except SystemExit as err:
        return str(err)
    return None


def md5(data):
    return hashlib.md5(data).hexdigest()


def wav_bytes(seconds, sr=SR, channels=1, seed=0):
    audio = np.random.default_rng(seed).uniform(-0.3, 0.3, (int(seconds * sr), channels)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- download
class Server:
    """Serves `files` on 127.0.0.1 with Range support; records each request's Range header.
    `cut_once` names files whose first full request is cut off half way (a dropped connection);
    `no_range` names files for which Range is ignored; `/private/` needs user:pw."""

    def __init__(self, files):
        self.files, self.log, self.cut_once, self.no_range = files, [], set(), set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.log.append((name, self.headers.get("Range")))
                if name.startswith("private/") and self.headers.get("Authorization") != "Basic dXNlcjpwdw==":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="voxceleb"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and name not in server.no_range:
                    start = int(rng.split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut_once and start == 0:
                    server.cut_once.discard(name)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    rng = np.random.default_rng(0)
    files = {name: rng.bytes(size) for name, size in
             (("a.zip", 3_000_000), ("b.tar.gz", 200_000), ("c.bin", 50_000), ("private/d.bin", 1000))}
    s = Server(files)
    yield s
    s.close()


def test_download_verifies_resumes_and_skips_finished_files(server, tmp_path):
    files = server.files
    lst = write(tmp_path / "urls.txt", ("%s/a.zip %s\n%s %s/b.tar.gz\n%s/c.bin\n" % (
        server.url, md5(files["a.zip"]), md5(files["b.tar.gz"]), server.url, server.url)).encode())
    out = tmp_path / "data"
    out.mkdir()
    write(out / "b.tar.gz.part", files["b.tar.gz"][:70_000])       # left by an interrupted run
    server.cut_once.add("a.zip")                                    # this one drops half way
    assert run("--download", "--download_list", lst, "--save_path", out, "--retries", "2") is None
    for name in ("a.zip", "b.tar.gz", "c.bin"):
        assert (out / name).read_bytes() == files[name]
    assert ("b.tar.gz", "bytes=70000-") in server.log                # resumed, not restarted
    assert ("a.zip", "bytes=1500000-") in server.log                 # the dropped one resumed too
    assert not list(out.glob("*.part"))
    before = len(server.log)
    assert run("--download", "--download_list", lst, "--save_path", out) is None
    assert len(server.log) == before                                # finished files: no request at all


def test_download_md5_mismatch_is_reported_and_not_kept(server, tmp_path):
    lst = write(tmp_path / "urls.txt", ("%s/c.bin %s\n" % (server.url, "0" * 32)).encode())
    err = run("--download", "--download_list", lst, "--save_path", tmp_path / "d")
    assert "c.bin: MD5 %s, expected %s" % (md5(server.files["c.bin"]), "0" * 32) in err
    assert not (tmp_path / "d" / "c.bin").exists() and (tmp_path / "d" / "c.bin.bad").exists()


def test_download_file_names_with_base_url_md5_list_and_auth(server, tmp_path):
    files = server.files
    # voxceleb_trainer-style name list plus an md5sum-style checksum list, behind a password
    lst = write(tmp_path / "parts.txt", b"d.bin\n")
    sums = write(tmp_path / "md5.txt", ("%s  d.bin\n" % md5(files["private/d.bin"])).encode())
    common = ("--download", "--download_list", lst, "--md5_list", sums, "--save_path", tmp_path / "d")
    assert "file name, not a URL; pass --base_url" in run(*common)
    assert "HTTP 401" in run(*common, "--base_url", server.url + "/private") and "--user" in \
        run(*common, "--base_url", server.url + "/private")
    assert run(*common, "--base_url", server.url + "/private", "--user", "user", "--password", "pw") is None
    assert (tmp_path / "d" / "d.bin").read_bytes() == files["private/d.bin"]


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.no_range.add("c.bin")
    out = tmp_path / "d"
    write(out / "c.bin.part", b"garbage that must not stay in front")
    lst = write(tmp_path / "u.txt", ("%s/c.bin %s\n" % (server.url, md5(server.files["c.bin"]))).encode())
    assert run("--download", "--download_list", lst, "--save_path", out) is None
    assert (out / "c.bin").read_bytes() == server.files["c.bin"]


def test_bad_list_line_names_file_and_line(tmp_path):
    lst = write(tmp_path / "urls.txt", b"http://x/a.zip\nhttp://x/b.zip http://x/c.zip\n")
    err = run("--download", "--download_list", lst, "--save_path", tmp_path)
    assert "urls.txt:2: expected 'URL MD5', 'MD5 filename' or 'URL'" in err


# ----------------------------------------------------------------------------- concatenate + extract
def vox_zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def split(data, n):
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


@pytest.fixture
def vox_zips():
    vox1 = {"wav/id10001/1zcIwhmdeo4/%05d.wav" % i: wav_bytes(0.3, seed=i) for i in (1, 2)}
    vox1["wav/id10002/xTV-jFAUKcw/00001.wav"] = wav_bytes(0.2, seed=3)
    vox2 = {"dev/aac/id00012/21Uxsk56VDQ/00001.m4a": wav_bytes(0.3, sr=44100, channels=2, seed=4),
            "dev/aac/id00012/21Uxsk56VDQ/00002.m4a": wav_bytes(0.2, sr=44100, channels=2, seed=5),
            "dev/aac/id00015/0fijmz4vTVU/00001.m4a": wav_bytes(0.2, sr=44100, channels=2, seed=6)}
    return vox_zip(vox1), vox_zip(vox2)


def test_concatenate_joins_parts_and_checks_md5(tmp_path, vox_zips):
    vox1, vox2 = vox_zips
    for i, part in enumerate(split(vox1, 4)):
        write(tmp_path / ("vox1_dev_wav_parta" + "abcd"[i]), part)
    # the built-in table knows VoxCeleb's real checksums: our fake parts fail them, and are named
    err = run("--concatenate", "--save_path", tmp_path)
    assert "vox1_dev_wav.zip: MD5 of the joined parts is %s" % md5(vox1) in err
    assert "bad parts: vox1_dev_wav_partaa" in err and not (tmp_path / "vox1_dev_wav.zip").exists()
    # voxceleb_trainer's lists/files.txt format with our own checksums
    for i, part in enumerate(split(vox2, 3)):
        write(tmp_path / ("vox2_dev_aac_parta" + "abc"[i]), part)
    lst = write(tmp_path / "files.txt", ("vox1_dev_wav_parta* vox1_dev_wav.zip %s\nvox2_dev_aac_parta* "
                                         "vox2_aac.zip %s\n" % (md5(vox1), md5(vox2))).encode())
    err = run("--concatenate", "--concat_list", lst, "--save_path", tmp_path)
    assert "missing vox2_dev_aac_partad" in err                      # VoxCeleb2 comes in 8 parts
    for i, part in enumerate(split(vox2, 8)):
        write(tmp_path / ("vox2_dev_aac_parta" + "abcdefgh"[i]), part)
    assert run("--concatenate", "--concat_list", lst, "--save_path", tmp_path) is None
    assert (tmp_path / "vox1_dev_wav.zip").read_bytes() == vox1
    assert (tmp_path / "vox2_aac.zip").read_bytes() == vox2
    mtime = (tmp_path / "vox1_dev_wav.zip").stat().st_mtime_ns
    assert run("--concatenate", "--concat_list", lst, "--save_path", tmp_path) is None
    assert (tmp_path / "vox1_dev_wav.zip").stat().st_mtime_ns == mtime   # finished: left alone
    assert not list(tmp_path.glob("*.tmp"))


def test_concatenate_without_parts_says_what_to_do(tmp_path):
    assert "download them first (--download)" in run("--concatenate", "--save_path", tmp_path)


def test_extract_places_voxceleb_trees_resumes_and_skips(tmp_path, vox_zips):
    write(tmp_path / "vox1_dev_wav.zip", vox_zips[0])
    write(tmp_path / "vox2_aac.zip", vox_zips[1])
    assert run("--extract", "--save_path", tmp_path) is None
    got = sorted(str(p.relative_to(tmp_path)) for d in ("voxceleb1", "voxceleb2") for p in (tmp_path / d).rglob("*")
                 if p.is_file() and not p.name.startswith("."))
    assert got == ["voxceleb1/id10001/1zcIwhmdeo4/00001.wav", "voxceleb1/id10001/1zcIwhmdeo4/00002.wav",
                   "voxceleb1/id10002/xTV-jFAUKcw/00001.wav", "voxceleb2/id00012/21Uxsk56VDQ/00001.m4a",
                   "voxceleb2/id00012/21Uxsk56VDQ/00002.m4a", "voxceleb2/id00015/0fijmz4vTVU/00001.m4a"]
    one = tmp_path / "voxceleb1/id10001/1zcIwhmdeo4/00001.wav"
    assert one.read_bytes() == wav_bytes(0.3, seed=1)
    # interrupted: the marker was not written and one file is missing -> only that one is written
    (tmp_path / "voxceleb1" / ".extracted-vox1_dev_wav.zip").unlink()
    one.unlink()
    other = tmp_path / "voxceleb1/id10002/xTV-jFAUKcw/00001.wav"
    mtime = other.stat().st_mtime_ns
    assert run("--extract", "--save_path", tmp_path) is None
    assert one.exists() and other.stat().st_mtime_ns == mtime
    assert not list(tmp_path.rglob("*.tmp"))


def test_extract_refuses_paths_outside_and_damaged_archives(tmp_path):
    write(tmp_path / "vox1_test_wav.zip", vox_zip({"../../evil.wav": b"x"}))
    assert "points outside the output folder" in run("--extract", "--save_path", tmp_path)
    write(tmp_path / "vox1_test_wav.zip", b"PK\x03\x04 not really a zip")
    assert "vox1_test_wav.zip" in run("--extract", "--save_path", tmp_path)
    assert "run --download and --concatenate first" in run("--extract", "--save_path", tmp_path / "none")


# ----------------------------------------------------------------------------- convert
FAKE_FFMPEG = """#!{python}
# stands in for ffmpeg: reads the input with soundfile, writes 16 kHz mono PCM_16 WAV
import sys, numpy as np, soundfile
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(args[args.index("-i") + 1] + "\\n")
try:
    audio, sr = soundfile.read(args[args.index("-i") + 1], always_2d=True)
except Exception as err:
    sys.stderr.write("Invalid data found when processing input\\n")
    sys.exit(1)
audio = audio.mean(1)
audio = np.interp(np.arange(int(len(audio) * 16000 / sr)) * sr / 16000, np.arange(len(audio)), audio)
soundfile.write(args[-1], audio, 16000, format="WAV", subtype="PCM_16")
"""


@pytest.fixture
def m4a_tree(tmp_path, vox_zips):
    with zipfile.ZipFile(io.BytesIO(vox_zips[1])) as zf:
        for m in zf.namelist():
            write(tmp_path / "voxceleb2" / m.split("aac/")[1], zf.read(m))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ffmpeg.log"
    script = write(bin_dir / "ffmpeg", FAKE_FFMPEG.format(python=sys.executable, log=str(log)).encode())
    script.chmod(0o755)
    return tmp_path, bin_dir, log


def test_convert_needs_ffmpeg(m4a_tree, monkeypatch):
    root, _, _ = m4a_tree
    monkeypatch.setenv("PATH", str(root / "nothing-here"))
    err = run("--convert", "--save_path", root)
    assert "ffmpeg not found" in err and "install ffmpeg (apt install ffmpeg)" in err


def test_convert_writes_16k_mono_and_skips_finished_files(m4a_tree, monkeypatch):
    root, bin_dir, log = m4a_tree
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    assert run("--convert", "--save_path", root, "--workers", "2") is None
    wavs = sorted((root / "voxceleb2").rglob("*.wav"))
    assert len(wavs) == 3 and len(log.read_text().splitlines()) == 3
    for w in wavs:
        info = soundfile.info(str(w))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    first = wavs[0]
    assert abs(soundfile.info(str(first)).duration - 0.3) < 0.01
    # a truncated WAV left by some other tool is redone; complete ones are not touched
    data = first.read_bytes()
    first.write_bytes(data[:len(data) // 2])
    mtime = wavs[1].stat().st_mtime_ns
    assert run("--convert", "--save_path", root) is None
    assert first.read_bytes() == data and wavs[1].stat().st_mtime_ns == mtime
    assert len(log.read_text().splitlines()) == 4                  # only the truncated one again
    # failures are counted and named; the rest is kept
    write(root / "voxceleb2/id00099/broken-vid/00001.m4a", b"not audio")
    err = run("--convert", "--save_path", root)
    assert "ffmpeg failed on 1 of 1 files" in err and "broken-vid/00001.m4a" in err
    assert not list(root.rglob("*.tmp.wav"))


# ----------------------------------------------------------------------------- augment
@pytest.fixture
def augment_archives(tmp_path):
    buf = io.BytesIO()
    lengths = {"music/fma/music-0001.wav": 12, "speech/librivox/speech-0001.wav": 11,
               "noise/free-sound/noise-0001.wav": 4.5, "noise/sound-bible/noise-0002.wav": 8}
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, seconds in lengths.items():
            data = wav_bytes(seconds, seed=len(name))
            info = tarfile.TarInfo("musan/" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    write(tmp_path / "musan.tar.gz", buf.getvalue())
    rirs = {"RIRS_NOISES/simulated_rirs/%s/Room001/Room001-00001.wav" % room: wav_bytes(0.5, seed=i)
            for i, room in enumerate(("smallroom", "mediumroom", "largeroom"))}
    rirs["RIRS_NOISES/pointsource_noises/noise-1.wav"] = wav_bytes(0.5)
    write(tmp_path / "rirs_noises.zip", vox_zip(rirs))
    sums = write(tmp_path / "md5.txt", "".join("%s  %s\n" % (md5((tmp_path / n).read_bytes()), n)
                                               for n in ("musan.tar.gz", "rirs_noises.zip")).encode())
    return tmp_path, sums


def test_augment_splits_musan_and_keeps_the_simulated_rooms(augment_archives):
    root, sums = augment_archives
    err = run("--augment", "--save_path", root)                      # published MD5s: our fakes fail
    assert "musan.tar.gz: MD5" in err and "download it again" in err
    assert run("--augment", "--save_path", root, "--md5_list", sums) is None
    split = root / "musan_split"
    chunks = sorted(str(p.relative_to(split)) for p in split.rglob("*.wav"))
    # voxceleb_trainer's rule: 5 s chunks every 3 s while start < length - 5 s
    assert chunks == ["music/fma/music-0001/00000.wav", "music/fma/music-0001/00003.wav",
                      "music/fma/music-0001/00006.wav", "noise/sound-bible/noise-0002/00000.wav",
                      "speech/librivox/speech-0001/00000.wav", "speech/librivox/speech-0001/00003.wav"]
    source, _ = soundfile.read(str(root / "musan/music/fma/music-0001.wav"), dtype="int16")
    chunk, sr = soundfile.read(str(split / "music/fma/music-0001/00003.wav"), dtype="int16")
    assert sr == SR and np.array_equal(chunk, source[3 * SR:8 * SR])
    rooms = sorted(p.parent.parent.name for p in (root / "RIRS_NOISES").rglob("*.wav"))
    assert rooms == ["mediumroom", "smallroom"]
    from speakernet.data import augment  # what training reads
    bank = augment.AugmentBank(split, root / "RIRS_NOISES" / "simulated_rirs")
    assert {k: len(v) for k, v in bank.files.items()} == {"music": 3, "speech": 2, "noise": 1, "reverb": 2}
    mtimes = {p: p.stat().st_mtime_ns for p in split.rglob("*.wav")}
    assert run("--augment", "--save_path", root, "--md5_list", sums) is None
    assert {p: p.stat().st_mtime_ns for p in split.rglob("*.wav")} == mtimes


def test_augment_without_musan_says_what_to_do(tmp_path):
    assert "no musan/*/*/*.wav" in run("--augment", "--save_path", tmp_path)


# ----------------------------------------------------------------------------- lists and checks
def test_make_list_from_a_tree(tmp_path):
    for rel in ("id00012/21Uxsk56VDQ/00001.wav", "id00012/21Uxsk56VDQ/00002.wav",
                "id00012/zzz/00001.wav", "id00001/aaa/00003.wav"):
        write(tmp_path / "vox" / rel, wav_bytes(0.1))
    write(tmp_path / "vox/id00001/stray.wav", wav_bytes(0.1))
    write(tmp_path / "vox/id00001/aaa/00003.m4a", b"")
    out = tmp_path / "lists" / "train_list.txt"
    assert run("--make_list", tmp_path / "vox", "--list_out", out) is None
    assert out.read_text().splitlines() == [
        "id00001 id00001/aaa/00003.wav", "id00012 id00012/21Uxsk56VDQ/00001.wav",
        "id00012 id00012/21Uxsk56VDQ/00002.wav", "id00012 id00012/zzz/00001.wav"]
    assert run("--make_list", tmp_path / "vox", "--list_out", out) is None      # same: no-op
    write(tmp_path / "vox/id00002/b/00001.wav", wav_bytes(0.1))
    assert "already exists with other contents; pass --overwrite" in run(
        "--make_list", tmp_path / "vox", "--list_out", out)
    assert run("--make_list", tmp_path / "vox", "--list_out", out, "--overwrite") is None
    assert len(out.read_text().splitlines()) == 5
    assert "no speaker/video/utt.wav" in run("--make_list", tmp_path / "lists", "--list_out", tmp_path / "x")


@pytest.fixture
def messy_tree(tmp_path):
    root = tmp_path / "data"
    write(root / "a/v/1.wav", wav_bytes(0.2))
    write(root / "a/v/2.wav", wav_bytes(0.2, seed=1))
    write(root / "b/v/1.wav", b"RIFF this is not audio")
    write(root / "b/v/2.wav", wav_bytes(0))
    write(root / "c/v/1.wav", wav_bytes(0.2, sr=8000))
    write(root / "c/v/2.wav", wav_bytes(0.2, channels=2))
    return root


def test_check_reports_each_kind_of_problem_from_a_list(messy_tree, capsys):
    lst = write(messy_tree.parent / "train.txt", b"a a/v/1.wav\na a/v/2.wav\nb b/v/1.wav\nb b/v/2.wav\n"
                b"c c/v/1.wav\nc c/v/2.wav\nd d/v/1.wav\nthree columns here\n")
    err = run("--check", messy_tree, "--list", lst)
    out = capsys.readouterr().out
    assert "6 problems" in err and "train list" in out
    for line in ("1 malformed line", "1 missing", "1 unreadable", "1 empty", "1 wrong sample rate",
                 "1 multi-channel"):
        assert "  %s, e.g.:" % line in out
    assert "d/v/1.wav (line 7)" in out and "sample rate 8000 Hz" in out and "train.txt:8" in out
    trials = write(messy_tree.parent / "trials.txt", b"1 a/v/1.wav a/v/2.wav\n0 a/v/1.wav c/v/2.wav\n")
    assert "1 problems" in run("--check", messy_tree, "--list", trials)
    assert "trial list" in capsys.readouterr().out
    good = write(messy_tree.parent / "good.txt", b"1 a/v/1.wav a/v/2.wav\n")
    assert run("--check", messy_tree, "--list", good) is None
    assert "2 usable" in capsys.readouterr().out


def test_check_scans_a_whole_tree(messy_tree, capsys):
    assert "4 problems" in run("--check", messy_tree)
    assert "nope.txt" in run("--check", messy_tree, "--list", messy_tree / "nope.txt")
    assert "Checked 6 files" in capsys.readouterr().out


def test_modes_do_not_mix(tmp_path):
    with pytest.raises(SystemExit):
        data_prep.main(["--synthetic", "--download", "--save_path", str(tmp_path)])


# ----------------------------------------------------------------------------- packed audio
def test_packed_crops_equal_wav_crops_and_fall_back(tmp_path):
    from speakernet.data import packed_audio
    from DatasetLoader import read_crop
    root = tmp_path / "wav"
    names = ["a/v/1.wav", "a/v/2.wav", "b/w/1.wav"]
    for i, (name, seconds) in enumerate(zip(names, (1.0, 0.1, 0.7))):
        write(root / name, wav_bytes(seconds, seed=i))
    write(root / "c/x/1.wav", wav_bytes(0.5, seed=9))                # not packed
    packed_audio.pack(names, root, tmp_path / "train")
    pack = packed_audio.PackedAudio(tmp_path / "train", root)
    read = packed_audio.reader([pack], read_crop)
    rng = np.random.default_rng(0)
    for name in names + ["c/x/1.wav"]:
        path = str(root / name)
        total = soundfile.info(path).frames
        for _ in range(5):
            length = int(rng.integers(100, 6000))                   # longer than 0.1 s: wraps
            start = int(rng.integers(0, max(total - length, 0) + 1))
            expected = read_crop(path, total, start, length)
            got = read(path, total, start, length)
            assert got.dtype == np.float32 and np.array_equal(got, expected), (name, start, length)
    assert str(root / "a/v/1.wav") in pack and str(root / "c/x/1.wav") not in pack


def test_pack_command_line(tmp_path, capsys, caplog):
    from speakernet.data import packed_audio
    write(tmp_path / "musan/noise/a.wav", wav_bytes(0.2))
    write(tmp_path / "musan/music/b.wav", wav_bytes(0.3, seed=1))
    packed_audio.main(["--dir", str(tmp_path / "musan"), "--out", str(tmp_path / "musan.pack")])
    pack = packed_audio.PackedAudio(tmp_path / "musan.pack", tmp_path / "musan")
    assert pack.names == ["music/b.wav", "noise/a.wav"] and list(pack.lengths) == [4800, 3200]
    packed_audio.main(["--dir", str(tmp_path / "musan"), "--out", str(tmp_path / "musan.pack")])
    assert "already packed" in capsys.readouterr().out
    write(tmp_path / "bad/x.wav", wav_bytes(0.2, sr=8000))
    assert packed_audio.main(["--dir", str(tmp_path / "bad"), "--out", str(tmp_path / "bad.pack")]) == 2
    assert "8000 Hz" in caplog.text and not list(tmp_path.glob("bad.pack*"))
