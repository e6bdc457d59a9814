"""Real data made ready to train on: --convert (VoxCeleb2 m4a -> 16 kHz mono WAV with ffmpeg) and
--augment (MUSAN split into 5 s chunks, RIRS_NOISES' simulated rooms extracted). Both resume where
they stopped and never rewrite a finished file."""
import concurrent.futures
import glob
import os
import shutil
import struct
import subprocess

import soundfile
from tqdm import tqdm

from speakernet.core.audio_check import _read_header       # one place decides what a usable audio file is
from speakernet.prep.common import SHOW, SR, PrepError, log, write_wav
from speakernet.prep.fetch import checksums, extract_archive, verify

RIR_ROOMS = ("RIRS_NOISES/simulated_rirs/mediumroom/", "RIRS_NOISES/simulated_rirs/smallroom/")


# ---- convert
def wav_complete(path):
    """A readable 16 kHz mono WAV whose RIFF size matches the file (an interrupted write does not)."""
    if _read_header(path)[3] is not None:
        return False
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:4] != b"RIFF" or struct.unpack("<I", head[4:8])[0] + 8 == os.path.getsize(path)


def convert_one(job):
    ffmpeg, src, dst = job
    tmp = dst[:-4] + ".tmp.wav"
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src,
           "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", str(SR), "-f", "wav", tmp]
    try:
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return src, "ffmpeg took over 10 minutes"
    if res.returncode != 0 or not os.path.exists(tmp) or not wav_complete(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        lines = res.stderr.strip().splitlines()
        return src, (lines[-1] if lines else "ffmpeg exited with %d" % res.returncode)
    os.replace(tmp, dst)
    return src, None


def convert(args):
    """VoxCeleb2 .m4a -> 16 kHz mono 16-bit .wav beside each file, several ffmpeg processes at once."""
    roots = [os.path.join(args.save_path, d) for d in ("voxceleb2", "voxceleb2_test")]
    files = sorted(f for r in roots for f in glob.glob(os.path.join(r, "**", "*.m4a"), recursive=True))
    if not files:
        raise PrepError("no .m4a files under %s; run --extract first" % " or ".join(roots))
    jobs = [(f, f[:-4] + ".wav") for f in files]
    todo = [(s, d) for s, d in tqdm(jobs, desc="checking converted files", unit="file", leave=False)
            if not (os.path.exists(d) and wav_complete(d))]
    log.info("%d of %d .m4a files are already converted", len(jobs) - len(todo), len(jobs))
    if todo:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise PrepError("ffmpeg not found on PATH, needed to convert %d .m4a files: install ffmpeg "
                            "(apt install ffmpeg)" % len(todo))
        failed = []
        # The work is in the ffmpeg processes; the pool's threads only start them and wait.
        with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool, \
                tqdm(total=len(todo), desc="converting m4a to wav", unit="file") as bar:
            for src, problem in pool.map(convert_one, [(ffmpeg, s, d) for s, d in todo]):
                if problem:
                    failed.append((src, problem))
                bar.update()
        if failed:
            raise PrepError("ffmpeg failed on %d of %d files, e.g. %s; check those files (download again "
                            "if damaged) and rerun, finished files are kept" % (
                                len(failed), len(todo), "; ".join("%s: %s" % f for f in failed[:SHOW])))
    print("Converted %d files (%d were already done) under %s" % (len(todo), len(jobs) - len(todo),
                                                                   " and ".join(roots)))


# ---- augmentation data
def split_recording(job):
    """One MUSAN recording -> 5 s chunks every 3 s in musan_split (voxceleb_trainer's split)."""
    src, out_dir = job
    if os.path.isdir(out_dir):
        return 0
    audio, sr = soundfile.read(src, dtype="int16", always_2d=True)
    audio = audio[:, 0]
    if sr != SR:
        raise PrepError("%s: sample rate %d Hz, expected %d; MUSAN is 16 kHz, is the archive right?"
                        % (src, sr, SR))
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    length, stride = 5 * SR, 3 * SR
    for start in range(0, len(audio) - length, stride):     # as voxceleb_trainer: files <= 5 s give none
        write_wav(os.path.join(tmp, "%05d.wav" % (start // SR)), audio[start:start + length])
    os.replace(tmp, out_dir)
    return 1


def prepare_augment(args):
    """MUSAN -> musan_split/{music,speech,noise} in 5 s chunks; RIRS_NOISES' simulated rooms kept in place."""
    root = args.save_path
    musan_tar = os.path.join(root, "musan.tar.gz")
    if os.path.exists(musan_tar):
        verify(musan_tar, checksums(args).get("musan.tar.gz"), "download it again")
        extract_archive(musan_tar, root)
    sources = sorted(glob.glob(os.path.join(root, "musan", "*", "*", "*.wav")))
    if not sources:
        raise PrepError("no musan/*/*/*.wav in %s and no musan.tar.gz to extract; download it first "
                        "(--download --download_list with the MUSAN URL)" % root)
    jobs = [(s, os.path.splitext(s.replace(os.path.join(root, "musan", ""),
                                           os.path.join(root, "musan_split", ""), 1))[0]) for s in sources]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
        done = sum(tqdm(pool.map(split_recording, jobs), total=len(jobs), desc="splitting MUSAN", unit="file"))
    rir_zip = os.path.join(root, "rirs_noises.zip")
    rir_dir = os.path.join(root, "RIRS_NOISES", "simulated_rirs")
    if os.path.exists(rir_zip):
        verify(rir_zip, checksums(args).get("rirs_noises.zip"), "download it again")
        extract_archive(rir_zip, root, select=lambda n: n if n.startswith(RIR_ROOMS) else None)
    if not glob.glob(os.path.join(rir_dir, "**", "*.wav"), recursive=True):
        raise PrepError("no RIRs in %s and no rirs_noises.zip in %s; download it first" % (rir_dir, root))
    print("MUSAN split (%d new recordings, %d in all); train with:\n  --augment --musan_path %s --rir_path %s"
          % (done, len(jobs), os.path.join(root, "musan_split"), rir_dir))
