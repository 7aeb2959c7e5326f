"""Run the cells of an evidence-harness spec in a chosen order (issue 18): ``hwloop bench methods`` runs cells in the
harness's fixed order (per seed, target: methods, then controls); on a shared machine with little time the cells that
answer the question first (HALOC and uniform-rank at both targets, then the ablation, then the controls, then more
seeds) should run first. Same folder, same cell files, same table as ``hwloop bench methods`` (resumable; finished
cells are skipped; the table is rewritten after every cell). One process builds the task once.

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_haloc_harness.py \\
        search/bench-methods-haloc-cifar10-resnet20.toml 'haloc__*__t0.7__s0' 'uniform-rank__*__t0.7__s0' ...

Patterns are ``fnmatch`` patterns on the cell keys (``<entry>__<device>__t<target>__s<seed>``), run in the order
given (a cell matched by several patterns runs once).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _key_is(key: str) -> Callable[[Any], bool]:
    return lambda c: bool(c.key == key)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec")
    ap.add_argument("patterns", nargs="+", help="fnmatch patterns of cell keys, in run order")
    ap.add_argument("--out", default=None, help="output folder (default search/results/<spec name>)")
    ap.add_argument("--list", action="store_true", help="only list the cells the patterns select, in order")
    args = ap.parse_args(argv)

    import torch

    from hwloop.search.harness import Harness
    from hwloop.search.harness_spec import load_harness_spec

    torch.set_num_threads(1)
    spec = load_harness_spec(args.spec)
    spec.check_files()
    h = Harness(spec, args.out or Path("search/results") / spec.name, log=lambda m: print(m, flush=True),
                progress=False)
    cells = h.cells()
    order: list[str] = []
    for p in args.patterns:
        order += [c.key for c in cells if fnmatch.fnmatchcase(c.key, p) and c.key not in order]
    if args.list:
        print("\n".join(f"{k}{' (done)' if h.done(next(c for c in cells if c.key == k)) else ''}" for k in order))
        return 0
    failed: list[str] = []
    for k in order:
        summary = h.run(only=_key_is(k))
        failed += summary["failed"]
        h.table()   # every finished cell of the spec (run() wrote the table of the selected cell only)
    print(f"ran {len(order)} selected cells; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
