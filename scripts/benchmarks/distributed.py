"""Data-parallel scaling of dataset-based training: 1 process against 2 under torchrun (DDP).

Trains the same scene with the same *global* batch (``train.batch_items``) as

* ``1 proc x 1 thread``  - the baseline of the efficiency;
* ``1 proc x 2 threads`` - what one process makes of the same two cores (for reference);
* ``2 procs x 1 thread`` - ``torchrun --nproc_per_node 2``, gloo, each rank half of the batch;

and on CUDA (when torch sees a GPU) ``1 proc`` against ``N procs`` with NCCL, one GPU each (needs
2+ GPUs; with one GPU the 1-process throughput is reported and the scaling is skipped, saying so).

Throughput is steps/s (and items/s) from ``metrics.jsonl`` between the ``--warmup``-th step and the
last (the logged ``time`` is the training time, mean over ranks, without start-up and data loading).
Scaling efficiency = t1 / (P * tP), t = seconds per step, P processes: 1.0 is perfect.

The default scene is the small hypernet configuration on the R2N2 objects when the data root has them
(``--scene toy`` forces the toy SDF-regression method of ``tests/distributed_plugins``). This
machine has 2 shared CPU cores: the load average before and after each case is recorded; compare cases
only within one run. Writes outputs/bench/distributed.json.

    python scripts/bench.py distributed [--steps 60] [--scene toy|hypernet|PATH.yaml] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

TOY_PLUGINS = _REPO / "tests" / "distributed_plugins"
HYPERNET = _REPO / "scenes" / "hypernet_r2n2.yaml"


def toy_scene(folder: Path, batch_items: int) -> tuple[Path, list[str]]:
    import yaml

    path = folder / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy", "method": "toy_mlp",
        "scene": {"type": "toy_sphere_items", "items": 512, "points": 512},
        "field": {"type": "toy_mlp", "hidden": 128, "layers": 4},
        "losses": [{"type": "toy_sdf_mse", "eikonal": 0.1, "eikonal_points": 2048}],
        "train": {"batch_items": batch_items, "lr": 0.003, "log_every": 1, "checkpoint_every": 100000,
                  "device": "cpu"},
    }))
    return path, ["--plugins-dir", str(TOY_PLUGINS)]


def hypernet_scene(batch_items: int) -> tuple[Path, list[str]]:
    # the scene file's CPU configuration, group norm (no SyncBatchNorm on CPU, see pipeline/train.py)
    return HYPERNET, ["--set", "field.norm=group", "--set", f"train.batch_items={batch_items}",
                      "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000"]


def pick_scene(name: str, folder: Path, batch_items: int) -> tuple[str, Path, list[str]]:
    if name == "toy":
        return ("toy", *toy_scene(folder, batch_items))
    if name == "hypernet" or (name == "auto" and HYPERNET.exists()):
        from pipeline.scenes import data_root

        root = data_root()
        if root is not None and (root / "shapenet_r2n2").is_dir():
            return ("hypernet", *hypernet_scene(batch_items))
        if name == "hypernet":
            raise SystemExit("the hypernet scene needs the R2N2 objects under the data root (set NLS_DATA)")
        print("no R2N2 data under the data root: benchmarking the toy method instead")
        return ("toy", *toy_scene(folder, batch_items))
    if name == "auto":
        return ("toy", *toy_scene(folder, batch_items))
    return (Path(name).stem, Path(name), [])


def run_case(scene: Path, extra: list[str], steps: int, procs: int, threads: int, device: str,
             warmup: int, out: Path) -> dict:
    """Train ``steps`` steps with ``procs`` processes of ``threads`` threads; steps/s after warm-up."""
    base = ["-m", "pipeline.cli", "reconstruct", str(scene), *extra, "--steps", str(steps), "--output",
            str(out), "-q", "--no-eval", "--device", device]
    cmd = ([sys.executable, *base] if procs == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *base])
    env = {**os.environ, "NLS_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"case {procs} proc x {threads} thread(s) failed:\n{proc.stderr[-3000:]}")
    metrics = sorted(out.glob("*/*/*/metrics.jsonl"))[-1]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    a, b = rows[min(warmup, len(rows) - 2)], rows[-1]
    sec_per_step = (b["time"] - a["time"]) / (b["step"] - a["step"])
    return {"processes": procs, "threads_per_process": threads, "device": device,
            "seconds_per_step": sec_per_step, "steps_per_s": 1.0 / sec_per_step,
            "final_loss": b["loss"], "wall_s": round(wall, 1), "load_before": load0, "load_after": os.getloadavg()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py distributed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="auto", help="toy, hypernet or a scene YAML (default: hypernet if its "
                    "data is there, else toy)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    ap.add_argument("--batch-items", type=int, default=16, help="global batch (items per step, all processes)")
    ap.add_argument("--quick", action="store_true", help="30 steps, warm-up 5")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU cases")
    ap.add_argument("--out", default=str(_REPO / "outputs" / "bench" / "distributed.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 30, 5
    import torch

    cores = os.cpu_count() or 1
    results: dict = {"cpu_cores": cores, "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
                     "batch_items": args.batch_items, "load_average_start": os.getloadavg(), "cases": []}
    with tempfile.TemporaryDirectory(prefix="nls-bench-dist-") as tmp:
        tmp = Path(tmp)
        label, scene, extra = pick_scene(args.scene, tmp, args.batch_items)
        results["scene"] = label
        print(f"scene: {label} ({scene}), global batch {args.batch_items} items, {args.steps} steps, "
              f"{cores} CPU cores (shared: see the load averages)")
        cpu = [] if args.no_cpu else [(1, 1), (1, 2), (2, 1)]
        for i, (procs, threads) in enumerate(cpu):
            r = run_case(scene, extra, args.steps, procs, threads, "cpu", args.warmup, tmp / f"cpu{i}")
            results["cases"].append(r)
            print(f"cpu  {procs} proc x {threads} thread(s): {r['steps_per_s']:.2f} steps/s "
                  f"({r['steps_per_s'] * args.batch_items:.1f} items/s), load {r['load_before'][0]:.2f} -> "
                  f"{r['load_after'][0]:.2f}")
        if cpu:
            t1 = results["cases"][0]["seconds_per_step"]
            t2 = results["cases"][2]["seconds_per_step"]
            results["cpu_scaling_efficiency_2proc"] = t1 / (2 * t2)
            results["cpu_speedup_2proc_vs_1proc_2threads"] = results["cases"][1]["seconds_per_step"] / t2
            print(f"cpu scaling efficiency 1 -> 2 processes: t1/(2*t2) = {results['cpu_scaling_efficiency_2proc']:.2f}; "
                  f"2 procs vs 1 proc with 2 threads: x{results['cpu_speedup_2proc_vs_1proc_2threads']:.2f}")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            results["cuda"] = "skipped: torch sees no CUDA device"
            print("cuda: skipped (torch sees no CUDA device)")
        else:
            one = run_case(scene, extra, args.steps, 1, 1, "cuda", args.warmup, tmp / "cuda1")
            results["cases"].append(one)
            print(f"cuda 1 proc: {one['steps_per_s']:.2f} steps/s on {torch.cuda.get_device_name(0)}")
            if gpus < 2:
                results["cuda"] = "scaling skipped: NCCL needs one GPU per process and torch sees 1 GPU"
                print("cuda: 2-process scaling skipped (one GPU; NCCL needs one GPU per process)")
            else:
                many = run_case(scene, extra, args.steps, gpus, 1, "cuda", args.warmup, tmp / "cudaN")
                results["cases"].append(many)
                results["cuda_scaling_efficiency"] = one["seconds_per_step"] / (gpus * many["seconds_per_step"])
                print(f"cuda {gpus} procs: {many['steps_per_s']:.2f} steps/s, scaling efficiency "
                      f"{results['cuda_scaling_efficiency']:.2f}")
    results["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
