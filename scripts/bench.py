#!/usr/bin/env python
"""Benchmarks: ``python scripts/bench.py NAME [options]`` prints a table and writes JSON.

Each benchmark is a module ``scripts/benchmarks/NAME.py`` with ``main(argv) -> dict``.
None of them is part of the default test run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("available:", ", ".join(names))
        print("options of one benchmark: python scripts/bench.py NAME --help")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"error: unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(HERE.parents[1]))
    spec = importlib.util.spec_from_file_location(f"nls_bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
