"""Every command the README and docs/ show stays runnable as written: its script or module
exists, every option it passes is one its parser lists in --help (with the model and
objective the command chooses, so their own options count), and every file of this
repository it names (configs/..., benchmarks/...) exists. Placeholders (X.yaml, M, DIR) only
need to be where a path goes."""
import contextlib
import io
import re
import runpy
import shlex
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Options that choose components, whose own options --help then lists.
CHOOSERS = ("--config", "--model", "--trainfunc", "--optimizer", "--scheduler")
EXTERNAL = ("pip", "pytest")           # python3 -m pip / pytest: not this project's parsers


def code_lines(text):
    """Lines of fenced or indented code blocks (a line ending in a backslash continues on the
    next), and inline `code` spans."""
    fenced, pending = False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            line = pending + line.strip()
            pending = line[:-1] if line.endswith("\\") else ""
            if not pending:
                yield line
        else:
            yield from re.findall(r"`([^`]+)`", line)


def commands():
    """(page, command) for every python3/torchrun command, `&&` chains split."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text(encoding="utf-8")):
            for part in line.split("&&"):
                part = part.split("  #")[0].split(" # ")[0].strip()
                if re.match(r"(python3|torchrun) ", part):
                    found.append((page.relative_to(ROOT).as_posix(), part))
    return found


def words(command):
    """The command's words without optional [...] groups and '...' ellipses."""
    command = re.sub(r"\[[^\]]*\]", "", command).replace("...", "")
    return shlex.split(command)


def entry_and_args(argv):
    """('script.py' or '-m module', its arguments) of a python3 or torchrun command."""
    if argv[0] == "torchrun":
        script = next(i for i, w in enumerate(argv) if w.endswith(".py"))
        return argv[script], argv[script + 1:]
    if argv[1] == "-m":
        return "-m " + argv[2], argv[3:]
    return argv[1], argv[2:]


def split_passthrough(entry, args):
    """[(entry, its args)]; ablate.py hands what follows `--` to every training run."""
    if entry == "ablate.py" and "--" in args:
        cut = args.index("--")
        return [(entry, args[:cut]), ("trainSpeakerNet.py", choosing_args(args[:cut]) + tuple(args[cut + 1:]))]
    return [(entry, args)]


def choosing_args(args):
    """The arguments that choose components, where the chosen file exists."""
    chosen = []
    for name, value in zip(args, args[1:]):
        if name in CHOOSERS and (name != "--config" or (ROOT / value).is_file()):
            chosen += [name, value]
    return tuple(chosen)


@lru_cache(maxsize=None)
def help_text(entry, chosen):
    """What `entry chosen... --help` prints, run in this process."""
    argv = [*chosen, "--help"]
    out = io.StringIO()
    saved = sys.argv, list(sys.path)
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            if entry.startswith("-m "):
                sys.argv = [entry[3:], *argv]
                with warnings.catch_warnings():       # the package imported the module already
                    warnings.simplefilter("ignore", RuntimeWarning)
                    runpy.run_module(entry[3:], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [str(ROOT / entry), *argv]
                sys.path.insert(0, str((ROOT / entry).parent))     # as python3 does for a script
                runpy.run_path(str(ROOT / entry), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved
    assert stop.value.code in (0, None), f"{entry} {' '.join(argv)} exited {stop.value.code}"
    return out.getvalue()


def repository_paths(args):
    return [a for a in args if re.match(r"(configs|benchmarks|tests)/\S+\.(yaml|py|sh)$", a)]


COMMANDS = commands()


def test_the_pages_show_commands():
    entries = {entry_and_args(words(c))[0] for _, c in COMMANDS}
    assert {"trainSpeakerNet.py", "data_prep.py", "ablate.py"} <= entries


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_documented_command_parses(page, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    entry, args = entry_and_args(words(command))
    if entry.startswith("-m ") and entry[3:] in EXTERNAL:
        return
    if not entry.startswith("-m "):
        assert (ROOT / entry).is_file(), f"{page}: {command!r} runs {entry}, which does not exist"
    missing = [p for p in repository_paths(args) if not (ROOT / p).is_file()]
    assert not missing, f"{page}: {command!r} names {missing}, which do not exist"
    for program, program_args in split_passthrough(entry, list(args)):
        listed = help_text(program, choosing_args(program_args))
        options = {a.split("=")[0] for a in program_args if a.startswith("--") and len(a) > 2}
        unknown = sorted(o for o in options
                         if not re.search(rf"{re.escape(o)}\b", listed)
                         and not (o.startswith("--no-") and re.search(rf"--{re.escape(o[5:])}\b", listed)))
        assert not unknown, f"{page}: {command!r} passes {unknown}, which {program} --help does not list"
