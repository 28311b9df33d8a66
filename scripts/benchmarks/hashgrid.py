"""Throughput of the hash-grid encoding paths (points/s, forward and forward+backward).

Paths compared in one run (same machine load):

* ``naive``  - a straightforward eager PyTorch encoding (int64 ``(N, L, 8, 3)`` corner tensors,
  ``embedding`` backward), written here as the baseline;
* ``torch``  - the project's pure-PyTorch path (``HashGridEncoding(backend="torch")``);
  ``torch+xgrad`` is the same with ``x.requires_grad`` (the geometry path: input gradient too);
* ``cpu_kernel`` - the project's C++ kernel (``backend="auto"`` on CPU); ``cpu_kernel+xgrad`` is
  the same with ``x.requires_grad`` (ray samples of refined camera poses, normals at evaluation);
* ``cuda:torch`` / ``cuda:tcnn`` - when a GPU (and tinycudann) is available.

"fwd" is inference (``torch.no_grad``); "fwd+bwd" is forward + backward w.r.t. the table (and
w.r.t. ``x`` for the ``+xgrad`` paths).
Default config: 16 levels x 2 features, 2^19 table, resolutions 16 -> 2048, uniform random points
(the worst case for caches; ray samples are more coherent).

Usage::

    python scripts/benchmarks/hashgrid.py --sizes 16,18 --repeats 3 --threads 2

The machine may be shared: the load average before and after is printed and stored; compare
paths only within one run. ``OMP_WAIT_POLICY=PASSIVE`` is set (unless already set) before torch is
imported when run as a script, which keeps timings steady on a loaded machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective only if torch is not imported yet

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

ALL_PATHS = ("naive", "torch", "torch+xgrad", "cpu_kernel", "cpu_kernel+xgrad", "cuda:torch", "cuda:tcnn")


class NaiveHashGrid(nn.Module):
    """The obvious eager formulation: all 8 corners as int64 (N, L, 8, 3), both index kinds
    computed for every level and picked with ``where``, ``embedding`` gather. Shares the
    parameters and level layout of a :class:`HashGridEncoding`, so it computes the same function."""

    def __init__(self, enc):
        super().__init__()
        self.enc = enc
        L = enc.n_levels
        self.register_buffer("res", torch.tensor(enc.resolutions, dtype=torch.float32).view(1, L, 1, 1))
        self.register_buffer("res_i", torch.tensor(enc.resolutions, dtype=torch.int64).view(1, L, 1))
        self.register_buffer("offset", torch.tensor(enc.offsets, dtype=torch.int64).view(1, L, 1))
        self.register_buffer("dense", torch.tensor(enc.dense).view(1, L, 1))
        bits = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
        self.register_buffer("bits", bits.view(1, 1, 8, 3))
        self.register_buffer("primes", torch.tensor([1, 2654435761, 805459861], dtype=torch.int64))

    def forward(self, x):
        enc = self.enc
        pos = x.clamp(0, 1)[:, None, None, :] * self.res  # (N, L, 1, 3)
        cell = torch.minimum(pos.floor(), self.res - 1)
        frac = pos - cell
        corners = cell.long() + self.bits  # (N, L, 8, 3) int64
        r1 = self.res_i + 1
        dense_idx = corners[..., 0] + corners[..., 1] * r1 + corners[..., 2] * r1 * r1
        hp = corners * self.primes
        hash_idx = ((hp[..., 0] ^ hp[..., 1] ^ hp[..., 2]) & 0xFFFFFFFF) % enc.hashmap_size
        idx = torch.where(self.dense, dense_idx, hash_idx) + self.offset  # (N, L, 8)
        w = torch.where(self.bits.bool(), frac, 1 - frac).prod(-1)  # (N, L, 8)
        feats = nn.functional.embedding(idx, enc.params)  # (N, L, 8, F)
        return (feats * w[..., None]).sum(2).reshape(x.shape[0], -1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeats, device):
    """Wall seconds and process CPU seconds (all threads) per repetition."""
    fn()  # warm-up (allocations, kernel load, autotuning)
    _sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def _bench_one(name, module, params, x, repeats, xgrad=False):
    device = x.device
    gout = torch.randn(x.shape[0], module_out_dim(module), device=device)

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        params.grad = None
        xi = x.detach().requires_grad_(True) if xgrad else x
        out = module(xi)
        out.backward(gout)

    row = {"path": name, "device": str(device), "n": int(x.shape[0])}
    n = x.shape[0]
    if not xgrad:
        tf, cf = _time(fwd, repeats, device)
        row.update(fwd_s_median=statistics.median(tf), fwd_s_min=min(tf),
                   fwd_pts_per_s=n / statistics.median(tf), fwd_pts_per_cpu_s=n / statistics.median(cf))
    tb, cb = _time(fwd_bwd, repeats, device)
    row.update(fwdbwd_s_median=statistics.median(tb), fwdbwd_s_min=min(tb),
               fwdbwd_pts_per_s=n / statistics.median(tb), fwdbwd_pts_per_cpu_s=n / statistics.median(cb))
    params.grad = None
    return row


def module_out_dim(m):
    return m.enc.output_dim if isinstance(m, NaiveHashGrid) else m.output_dim


def main(argv: list[str] | None = None) -> dict:
    from plugins.ngp import hashgrid as hg
    from plugins.ngp.hashgrid import HashGridEncoding

    p = argparse.ArgumentParser(prog="bench.py hashgrid", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16,18", help="log2 of the point counts, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--paths", default=",".join(ALL_PATHS), help=f"subset of {','.join(ALL_PATHS)}")
    p.add_argument("--naive-max-log2", type=int, default=18, help="skip the naive baseline above 2^this")
    p.add_argument("--out", default="outputs/bench/hashgrid.json", help="JSON result file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = sorted(set(paths) - set(ALL_PATHS))
    if unknown:
        p.error(f"unknown paths {unknown}; available: {', '.join(ALL_PATHS)}")

    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "config": {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                   "base_resolution": 16, "max_resolution": 2048},
        "points": "uniform random in [0,1]^3",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    torch.manual_seed(args.seed)
    enc_torch = HashGridEncoding(backend="torch")
    enc_auto = HashGridEncoding(backend="auto")
    enc_auto.load_state_dict(enc_torch.state_dict())
    naive = NaiveHashGrid(enc_torch)

    kernel_paths = any(q.startswith("cpu_kernel") for q in paths)
    if kernel_paths:
        t0 = time.perf_counter()
        ok = hg.load_cpu_kernel()
        meta["cpu_kernel"] = {"ok": ok, "error": hg.cpu_kernel_status()["error"],
                              "build_or_load_s": time.perf_counter() - t0}
        if not ok:
            paths, kernel_paths = [q for q in paths if not q.startswith("cpu_kernel")], False

    # correctness guard: every CPU path computes the same function
    xs = torch.rand(2048, 3)
    with torch.no_grad():
        ref = enc_torch(xs)
        meta["max_abs_diff_vs_torch"] = {"naive": float((naive(xs) - ref).abs().max())}
        if kernel_paths:
            meta["max_abs_diff_vs_torch"]["cpu_kernel"] = float((enc_auto(xs) - ref).abs().max())

    rows = []
    for lg in sizes:
        n = 1 << lg
        x = torch.rand(n, 3)
        for name in paths:
            if name == "naive" and lg <= args.naive_max_log2:
                rows.append(_bench_one(name, naive, enc_torch.params, x, args.repeats))
            elif name == "torch":
                rows.append(_bench_one(name, enc_torch, enc_torch.params, x, args.repeats))
            elif name == "torch+xgrad":
                rows.append(_bench_one(name, enc_torch, enc_torch.params, x, args.repeats, xgrad=True))
            elif name in ("cpu_kernel", "cpu_kernel+xgrad"):
                assert enc_auto.path_for(x) == "cpu_kernel"
                rows.append(_bench_one(name, enc_auto, enc_auto.params, x, args.repeats, xgrad=name.endswith("xgrad")))
            elif name == "cuda:torch" and torch.cuda.is_available():
                enc_c = HashGridEncoding(backend="torch").cuda()
                rows.append(_bench_one(name, enc_c, enc_c.params, x.cuda(), args.repeats))
                del enc_c
            elif name == "cuda:tcnn" and torch.cuda.is_available() and hg._tcnn_module() is not None:
                enc_c = HashGridEncoding(backend="tcnn").cuda()
                rows.append(_bench_one(name, enc_c, enc_c.tcnn_encoding.params, x.cuda(), args.repeats))
                del enc_c
            if rows and rows[-1]["path"] == name and rows[-1]["n"] == n:
                r = rows[-1]
                print(f"  2^{lg} {name:12s} fwd {r.get('fwd_pts_per_s', float('nan')) / 1e6:7.3f} M/s  "
                      f"fwd+bwd {r['fwdbwd_pts_per_s'] / 1e6:7.3f} M/s  load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)
    meta["loadavg_end"] = list(os.getloadavg())
    result = {"meta": meta, "results": rows}
    _print_table(result)
    out = Path(args.out)
    if not out.is_absolute():
        out = _REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def _print_table(result):
    meta, rows = result["meta"], result["results"]
    head = (f"hash grid 16x2, T=2^19, 16->2048 | torch {meta['torch']} | threads {meta['threads']} | "
            f"OMP_WAIT_POLICY={meta['omp_wait_policy']} | load avg start "
            f"{'/'.join(f'{v:.2f}' for v in meta['loadavg_start'])} end "
            f"{'/'.join(f'{v:.2f}' for v in meta['loadavg_end'])}")
    fmt = lambda v: "-" if v is None else f"{v / 1e6:.3f}"  # noqa: E731
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=head)
        for c in ("path", "device", "points", "fwd M pts/s", "fwd+bwd M pts/s", "fwd M/cpu-s",
                  "fwd+bwd M/cpu-s"):
            t.add_column(c, justify="right" if c not in ("path", "device") else "left")
        for r in rows:
            t.add_row(r["path"], r["device"], f"2^{r['n'].bit_length() - 1}", fmt(r.get("fwd_pts_per_s")),
                      fmt(r.get("fwdbwd_pts_per_s")), fmt(r.get("fwd_pts_per_cpu_s")),
                      fmt(r.get("fwdbwd_pts_per_cpu_s")))
        Console(width=max(132, Console().width)).print(t)
    except ImportError:
        print(head)
        for r in rows:
            print(f"{r['path']:12s} {r['device']:6s} 2^{r['n'].bit_length() - 1:<3d} "
                  f"{fmt(r.get('fwd_pts_per_s')):>8s} {fmt(r.get('fwdbwd_pts_per_s')):>8s}")
    print("M/cpu-s: points per second of process CPU time (all threads); less sensitive to other load.")
    if "cpu_kernel" in meta:
        print(f"cpu kernel: {meta['cpu_kernel']}")
    print(f"max |path - torch| on 2048 points: {meta['max_abs_diff_vs_torch']}")


if __name__ == "__main__":
    main()
