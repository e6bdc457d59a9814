"""Fetching real data, voxceleb_trainer's first steps: --download (MD5-checked, resumed with HTTP
Range), --concatenate (VoxCeleb's split archives) and --extract. Each step resumes where it stopped:
finished outputs are never rewritten, and every output is written under a temporary name and
renamed when complete."""
import glob
import hashlib
import os
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

from tqdm import tqdm

from speakernet.core.atomic import atomic_file
from speakernet.core.audio import list_lines
from speakernet.prep.common import PrepError, log, write_atomic

# Published checksums (VoxCeleb's and OpenSLR's lists) of the archives voxceleb_trainer uses;
# a --md5_list or the download list's own MD5 column takes precedence.
KNOWN_MD5 = {
    "vox1_dev_wav_partaa": "e395d020928bc15670b570a21695ed96",
    "vox1_dev_wav_partab": "bbfaaccefab65d82b21903e81a8a8020",
    "vox1_dev_wav_partac": "017d579a2a96a077f40042ec33e51512",
    "vox1_dev_wav_partad": "7bb1e9f70fddc7a678fa998ea8b3ba19",
    "vox2_dev_aac_partaa": "da070494c573e5c0564b1d11c3b20577",
    "vox2_dev_aac_partab": "17fe6dab2b32b48abaf1676429cdd06f",
    "vox2_dev_aac_partac": "1de58e086c5edf63625af1cb6d831528",
    "vox2_dev_aac_partad": "5a043eb03e15c5a918ee6a52aad477f9",
    "vox2_dev_aac_partae": "cea401b624983e2d0b2a87fb5d59aa60",
    "vox2_dev_aac_partaf": "fc886d9ba90ab88e7880ee98effd6ae9",
    "vox2_dev_aac_partag": "d160ecc3f6ee3eed54d55349531cb42e",
    "vox2_dev_aac_partah": "6b84a81b9af72a9d9eecbb3b1f602e65",
    "vox1_test_wav.zip": "185fdc63c3c739954633d50379a3d102",
    "vox2_test_aac.zip": "0d2b3ea430a821c33263b5ea37ede312",
    "vox1_dev_wav.zip": "ae63e55b951748cc486645f532ba230b",
    "vox2_aac.zip": "bbc063c46078a602ca71605645c2a402",
    "vox2_dev_aac.zip": "bbc063c46078a602ca71605645c2a402",
    "rirs_noises.zip": "e6f48e257286e05de56413b4779d8ffb",
    "musan.tar.gz": "0c472d4fc0c5141eca47ad1ffeb2a7df",
}
# voxceleb_trainer's lists/files.txt: split parts -> archive (its MD5 comes from KNOWN_MD5)
CONCATENATE = (("vox1_dev_wav_parta*", "vox1_dev_wav.zip"), ("vox2_dev_aac_parta*", "vox2_aac.zip"))
# archive -> folder under --save_path (voxceleb_trainer's voxceleb1 = VoxCeleb1 dev + test, the
# trial lists' test_path; VoxCeleb2 dev alone in voxceleb2, so a list made from it is the usual one)
VOX_ARCHIVES = (("vox1_dev_wav.zip", "voxceleb1"), ("vox1_test_wav.zip", "voxceleb1"),
                ("vox2_aac.zip", "voxceleb2"), ("vox2_dev_aac.zip", "voxceleb2"),
                ("vox2_test_aac.zip", "voxceleb2_test"))
MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")
CHUNK = 1 << 20


def blocks(f):
    """The contents of an open binary file or HTTP response, CHUNK bytes at a time."""
    return iter(lambda: f.read(CHUNK), b"")


def byte_bar(total, desc, initial=0):
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


def md5_sidecar(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".md5")


def md5_of(path, desc=None, cache=True):
    """MD5 of a file, cached beside it (.NAME.md5: digest, size, mtime) so reruns skip the read."""
    stat = os.stat(path)
    try:
        digest, size, mtime = open(md5_sidecar(path)).read().split()
        if int(size) == stat.st_size and int(mtime) == stat.st_mtime_ns:
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.md5()
    with open(path, "rb") as f, byte_bar(stat.st_size, desc or "md5 " + os.path.basename(path)) as bar:
        for block in blocks(f):
            h.update(block)
            bar.update(len(block))
    if cache:
        remember_md5(path, h.hexdigest())
    return h.hexdigest()


def remember_md5(path, digest):
    stat = os.stat(path)
    try:
        write_atomic(md5_sidecar(path), ["%s %d %d" % (digest, stat.st_size, stat.st_mtime_ns)])
    except OSError:
        pass


def read_checksum_list(path):
    """[(URL or file name, MD5 or None)] from 'URL MD5', 'MD5 filename' (md5sum) or 'URL' lines."""
    entries = []
    for number, cols in list_lines(path):       # a missing file, a folder, not UTF-8: one error
        if cols[0].startswith("#"):
            continue
        line = " ".join(cols)
        sums = [c for c in cols if MD5_RE.match(c)]
        names = [c.lstrip("*") for c in cols if not MD5_RE.match(c)]   # md5sum marks binary mode with *
        if len(names) != 1 or len(sums) > 1:
            raise PrepError("%s:%d: expected 'URL MD5', 'MD5 filename' or 'URL', got %r" % (path, number, line))
        entries.append((names[0], sums[0].lower() if sums else None))
    return entries


def url_name(url):
    name = urllib.parse.unquote(os.path.basename(urllib.parse.urlsplit(url).path))
    if not name or name in (".", ".."):
        raise PrepError("cannot tell a file name from the URL %s; give a URL that ends in one" % url)
    return name


def checksums(args):
    """File name -> expected MD5: the published ones, then --md5_list, then the download list."""
    known = dict(KNOWN_MD5)
    for source in filter(None, (args.md5_list, args.download_list)):
        for name, digest in read_checksum_list(source):
            if digest:
                known[url_name(name) if "/" in name else name] = digest
    return known


def verify(path, expected, what):
    """Raise PrepError unless the MD5 of `path` is `expected` (None: nothing to check)."""
    if expected is None:
        return
    got = md5_of(path)
    if got != expected:
        raise PrepError("%s: MD5 %s, expected %s (%s)" % (path, got, expected, what))


# ---- download
def download(args):
    """Fetch every file of --download_list into --save_path, resuming .part files with HTTP Range."""
    if not args.download_list:
        raise PrepError("--download needs --download_list FILE: lines of 'URL MD5' (VoxCeleb's list with "
                        "the links you were sent, or voxceleb_trainer's lists/augment.txt)")
    known = checksums(args)
    entries = read_checksum_list(args.download_list)
    os.makedirs(args.save_path, exist_ok=True)
    for name, digest in entries:
        url = name
        if "://" not in url:
            if not args.base_url:
                raise PrepError("%s: '%s' is a file name, not a URL; pass --base_url (where the files are)"
                                % (args.download_list, name))
            url = args.base_url.rstrip("/") + "/" + urllib.parse.quote(name)
        fetch(url, os.path.join(args.save_path, url_name(url)), digest or known.get(url_name(url)), args)


def fetch(url, dest, expected, args):
    """Download `url` to `dest` through `dest`.part (resumed), check its MD5 against
    `expected` (None: nothing to check) and only then rename it to `dest`."""
    name = os.path.basename(dest)
    if os.path.exists(dest):
        verify(dest, expected, "a finished download is never overwritten: delete it and run again")
        log.info("%s is already downloaded%s", name, " and verified" if expected else "")
        return
    part = dest + ".part"
    digest = download_part(opener_for(url, args), url, part, name, args)
    if digest is None:                                       # --retries 0: no attempt made
        return
    if expected and digest != expected:
        os.replace(part, dest + ".bad")
        raise PrepError("%s: MD5 %s, expected %s; kept as %s.bad for inspection, run again to download "
                        "it afresh (if it fails again the list or the server's file is wrong)"
                        % (name, digest, expected, dest))
    os.replace(part, dest)
    remember_md5(dest, digest)
    print("Downloaded %s%s" % (name, " (MD5 verified)" if expected else " (no MD5 known to verify)"))


def opener_for(url, args):
    handlers = []
    if args.user:                    # answered only to this URL's own challenge, as wget does
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, url, args.user, args.password or "")
        handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
    return urllib.request.build_opener(*handlers)


def download_part(opener, url, part, name, args):
    """Complete `part` from `url` in up to --retries attempts, each resuming the last -> the
    MD5 of the whole file (None when no attempt is made)."""
    for attempt in range(1, args.retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            return receive(opener, url, part, name, have, args.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:                     # nothing left to fetch: the part is complete
                return md5_of(part, cache=False)
            if err.code in (401, 403):
                raise PrepError("%s: HTTP %d %s; check --user/--password (or the key in the URL)"
                                % (url, err.code, err.reason))
            raise PrepError("%s: HTTP %d %s; check the URL in %s" % (url, err.code, err.reason,
                                                                     args.download_list))
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            if attempt == args.retries:
                raise PrepError("%s: download interrupted (%s); run the same command again to resume %s"
                                % (url, reason, part))
            log.warning("%s: %s; resuming (attempt %d of %d)", name, reason, attempt + 1, args.retries)
            time.sleep(min(30, 2 ** (attempt - 1)))
    return None


def receive(opener, url, part, name, have, timeout):
    """One attempt: append the rest of `url` to `part`, whose first `have` bytes are there
    (HTTP Range) -> the MD5 of the whole part. A server that ignores Range starts it again."""
    headers = {"User-Agent": "speakernet-data_prep", **({"Range": "bytes=%d-" % have} if have else {})}
    with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        if have and response.status != 206:
            log.warning("%s: the server does not resume downloads; starting %s again", url, name)
            have = 0
        size = response.headers.get("Content-Length")
        total = have + int(size) if size is not None else None
        h = hashlib.md5()
        if have:                                             # hash what is already there, then go on
            with open(part, "rb") as f:
                for block in blocks(f):
                    h.update(block)
        with open(part, "ab" if have else "wb") as out, byte_bar(total, name, have) as bar:
            for block in blocks(response):
                out.write(block)
                h.update(block)
                bar.update(len(block))
        if total is not None and os.path.getsize(part) < total:
            raise ConnectionError("connection closed early")
        return h.hexdigest()


# ---- concatenate
def concatenate(args):
    """Join VoxCeleb's split archives: vox1_dev_wav_parta* -> vox1_dev_wav.zip and so on."""
    known = checksums(args)
    if args.concat_list:                                     # voxceleb_trainer's lists/files.txt
        jobs = []
        for number, cols in list_lines(args.concat_list):
            if not cols[0].startswith("#"):
                if len(cols) not in (2, 3) or len(cols) == 3 and not MD5_RE.match(cols[2]):
                    raise PrepError("%s:%d: expected 'PARTS_PATTERN OUTPUT [MD5]', got %r"
                                    % (args.concat_list, number, " ".join(cols)))
                jobs.append((cols[0], cols[1], cols[2].lower() if len(cols) == 3 else known.get(cols[1])))
    else:
        jobs = [(pattern, out, known.get(out)) for pattern, out in CONCATENATE]
    found = 0
    for pattern, out_name, expected in jobs:
        out = os.path.join(args.save_path, out_name)
        parts = sorted(p for p in glob.glob(os.path.join(args.save_path, pattern))
                       if not p.endswith((".part", ".bad", ".tmp")))
        if os.path.exists(out):
            verify(out, expected, "a finished archive is never overwritten: delete it and run again")
            log.info("%s is already complete", out_name)
            found += 1
            continue
        if not parts:
            log.info("no %s in %s: skipping %s", pattern, args.save_path, out_name)
            continue
        found += 1
        prefix = pattern.rstrip("*")
        expected_parts = sorted(k for k in known if k.startswith(prefix) and "*" in pattern)
        missing = [k for k in expected_parts if not os.path.exists(os.path.join(args.save_path, k))]
        if missing:
            raise PrepError("%s: missing %s in %s; download them first (--download)"
                            % (out_name, ", ".join(missing), args.save_path))
        h = hashlib.md5()
        # Renamed to `out` only when the MD5 matches; a mismatch leaves nothing behind.
        with atomic_file(out) as dst, byte_bar(sum(map(os.path.getsize, parts)), out_name) as bar:
            for part in parts:
                with open(part, "rb") as src:
                    for block in blocks(src):
                        dst.write(block)
                        h.update(block)
                        bar.update(len(block))
            if expected and h.hexdigest() != expected:
                bad = [os.path.basename(p) for p in parts
                       if known.get(os.path.basename(p)) and md5_of(p) != known[os.path.basename(p)]]
                raise PrepError("%s: MD5 of the joined parts is %s, expected %s; %s" % (
                    out_name, h.hexdigest(), expected,
                    "bad parts: %s (delete and download them again)" % ", ".join(bad) if bad else
                    "check that all of %s are complete (%d found)" % (pattern, len(parts))))
        remember_md5(out, h.hexdigest())
        print("Joined %d parts into %s%s (the parts can be deleted)"
              % (len(parts), out_name, " (MD5 verified)" if expected else ""))
    if not found:
        raise PrepError("no %s in %s; download them first (--download)"
                        % (" or ".join(p for p, _, _ in jobs), args.save_path))


# ---- extract
def safe_member_path(dest, name, archive):
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise PrepError("%s: refusing the member %r, which points outside the output folder" % (archive, name))
    return os.path.join(dest, *parts)


def strip_to_speaker(name):
    """'wav/id10001/x/00001.wav', 'dev/aac/id00012/...' -> 'id10001/x/00001.wav' (VoxCeleb zips)."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        if re.match(r"^id\d+$", part):
            return "/".join(parts[i:])
    return name


def extract_archive(archive, dest, select=lambda name: name, desc=None):
    """Extract the members `select` maps to a path (None = skip) into `dest`; members already
    there with their full size are skipped, each file is written under .tmp and renamed, and a
    marker records a finished archive so a rerun costs nothing."""
    stat = os.stat(archive)
    marker = os.path.join(dest, ".extracted-" + os.path.basename(archive))
    stamp = "%d %d" % (stat.st_size, stat.st_mtime_ns)
    if os.path.exists(marker) and open(marker).read().strip() == stamp:
        log.info("%s is already extracted into %s", os.path.basename(archive), dest)
        return 0
    os.makedirs(dest, exist_ok=True)
    written = 0
    desc = desc or os.path.basename(archive)

    def put(name, size, open_member, count=True):
        nonlocal written
        target = select(name)
        if target is None:
            return
        path = safe_member_path(dest, target, archive)
        if os.path.exists(path) and os.path.getsize(path) == size:
            bar.update(size if count else 0)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open_member() as src, atomic_file(path) as dst:
            for block in blocks(src):
                dst.write(block)
                bar.update(len(block) if count else 0)
        written += 1

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.infolist() if not m.is_dir() and select(m.filename) is not None]
                with byte_bar(sum(m.file_size for m in members), desc) as bar:
                    for m in members:
                        put(m.filename, m.file_size, lambda m=m: zf.open(m))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf, byte_bar(stat.st_size, desc) as bar:
                raw = getattr(tf.fileobj, "fileobj", tf.fileobj)   # under gzip: the compressed file
                for m in tf:                                 # streamed: no second pass over a .tar.gz
                    if m.isfile():
                        put(m.name, m.size, lambda m=m: tf.extractfile(m), count=False)
                    try:
                        bar.update(max(0, min(raw.tell(), stat.st_size) - bar.n))   # compressed bytes read
                    except (AttributeError, OSError):
                        pass
        else:
            raise PrepError("%s is neither a zip nor a tar archive; download it again" % archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise PrepError("%s is damaged (%s); check its MD5 and download it again" % (archive, err))
    write_atomic(marker, [stamp])
    return written


def extract(args):
    """Unzip the VoxCeleb archives in --save_path into voxceleb1/, voxceleb2/, voxceleb2_test/."""
    todo = [(a, d) for a, d in VOX_ARCHIVES if os.path.exists(os.path.join(args.save_path, a))]
    if not todo:
        raise PrepError("no %s in %s; run --download and --concatenate first"
                        % (", ".join(a for a, _ in VOX_ARCHIVES), args.save_path))
    for archive, folder in todo:
        n = extract_archive(os.path.join(args.save_path, archive), os.path.join(args.save_path, folder),
                            select=lambda name: strip_to_speaker(name))
        print("Extracted %s into %s (%d files written)" % (archive, os.path.join(args.save_path, folder), n))
