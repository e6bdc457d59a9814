#!/usr/bin/env python3
"""The test suite under load: run it several times in a row while other processes keep every
core busy, as on a shared machine. No test may depend on an idle machine.

    python3 benchmarks/busy_suite.py                 # 3 runs, one busy loop per core
    python3 benchmarks/busy_suite.py --runs 1 --busy 2 -- -x tests/test_faults.py

Prints each run's result line and wall time; exits non-zero if any run failed.
"""
import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("busy_suite")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="suite runs in a row")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes")
    parser.add_argument("pytest_args", nargs="*", default=["tests"], help="after --: pytest arguments")
    args = parser.parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    failed = 0
    try:
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   *args.pytest_args], cwd=REPO, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.strip()]
            summary = lines[-1] if lines else "(no output)"
            log.info("run %d of %d, %d busy processes: %s; %.0f s", run, args.runs, args.busy, summary,
                     time.perf_counter() - started)
            if done.returncode != 0:
                failed += 1
                log.info("%s", "\n".join(lines[-40:]))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
