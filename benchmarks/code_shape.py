#!/usr/bin/env python3
"""The code's shape: modules, classes and functions over their size limits.

    python3 benchmarks/code_shape.py [--module 400] [--klass 200] [--function 60]

Counts the lines of every module, class and function outside tests/ and benchmarks/ and prints
those over the limits (a function's size includes its docstring and nested functions).
"""
import argparse
import ast
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("code_shape")


def sources():
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] not in ("tests", "benchmarks") and not any(p.startswith(".") for p in relative.parts):
            yield relative, path.read_text()


def oversized(limits):
    """-> [(kind, 'file:line name', lines)] over the limits."""
    found = []
    for relative, text in sources():
        lines = text.count("\n")
        if lines > limits["module"]:
            found.append(("module", str(relative), lines))
        for node in ast.walk(ast.parse(text)):
            kind = {ast.ClassDef: "klass", ast.FunctionDef: "function",
                    ast.AsyncFunctionDef: "function"}.get(type(node))
            if kind:
                size = node.end_lineno - node.lineno + 1
                if size > limits[kind]:
                    found.append((kind, f"{relative}:{node.lineno} {node.name}", size))
    return found


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", type=int, default=400)
    parser.add_argument("--klass", type=int, default=200)
    parser.add_argument("--function", type=int, default=60)
    limits = vars(parser.parse_args(argv))
    found = oversized(limits)
    for kind, where, size in found:
        log.info("%-8s %4d lines (limit %d)  %s", "class" if kind == "klass" else kind, size, limits[kind], where)
    log.info("%d over the limits", len(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
