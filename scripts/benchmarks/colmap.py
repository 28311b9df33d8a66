"""Benchmark ``colmap``: the ``colmap`` scene source on real data, against the Blender loader.

The shared NeRF-synthetic lego is written out as a COLMAP capture (a text model with one PINHOLE camera and
the images linked under new names) in the kind of frame a COLMAP reconstruction has: tilted by ``--tilt``
degrees about a horizontal axis, scaled by ``--sigma`` and moved. Its train views, and every 8th image by
name, which are lego's first test views, follow the colmap source's split rule. One scene file
(``lego_dense.yaml``) is trained for the same steps on

* ``blender``: the Blender folder, as the lego benchmarks load it;
* ``colmap-matched``: the capture with ``center`` and ``scale`` given (the point that was lego's origin,
  1/sigma), so that its frame is Blender's up to the loader's +Z-up rotation, and lego_dense's box;
* ``colmap-auto``: the capture with nothing given: +Z up from the cameras, and, since the capture has no
  sparse points, the box from the cameras;
* ``colmap-points``: the same with sparse points, as COLMAP's would lie: ``--points`` samples of the
  ``blender`` run's mesh (or ``--points-mesh``) and 5% far outliers, in the written world; the box is
  found from them;

* ``colmap-distorted``: the matched capture through an OPENCV camera with barrel distortion (``--distortion``
  k1, k2, p1, p2; about 6 px at lego's corners by default), its images the photos as that camera sees them: the
  colmap source undistorts them when it loads them;
* ``colmap-distorted-pinhole``: the same capture read as pinhole cameras (``scene.undistort=false``), the reading
  before the source undistorted (each run scored on its test images as it loaded them);

* ``photos``: the same images, composited on white, as a folder of photos without poses: the ``photos``
  source runs structure from motion on them (pycolmap: SIFT, exhaustive matching, incremental mapping,
  undistortion), and the poses it finds are compared with lego's (after the similarity that best aligns the
  camera centres): rotation error in degrees and centre error as a fraction of the cameras' mean distance
  from their centroid;

and each is scored on the same test views (``photos``: the same ones when every photo is registered), as its
loader loaded them, and (but ``photos``) on lego's own test images at its true cameras carried into the run's
frame (:func:`truth_psnr`), one truth for loaders that saw different images. Reported: PSNR, SSIM, steps and seconds, and the angle of the
rotation left between the frame the loader found and Blender's (the up-rotation does not recover a yaw
about +Z, and the cameras' mean up is only near lego's +Z). Writes outputs/bench/colmap.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
#: lego's origin in the written COLMAP world, and the horizontal axis the world is tilted about
SHIFT = np.array([2.5, -7.0, 0.75])
TILT_AXIS = np.array([0.6, 0.8, 0.0])


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()


def held_out_count(n_train: int, every: int = 8) -> int:
    """How many test views, interleaved with ``n_train`` train views, make every ``every``-th image by name a
    test view and no other: the smallest n with n == ceil((n_train + n) / every)."""
    n = 1
    while n != math.ceil((n_train + n) / every):
        n += 1
    return n


def capture_order(lego: Path) -> tuple[list[dict], int, float]:
    """``(frames, n_test, camera_angle_x)``: lego's frames in the capture's image order (image k is test view k/8
    when k is a multiple of 8, else the next train view), how many test views that holds, and the field of view."""
    docs = {s: json.loads((lego / f"transforms_{s}.json").read_text()) for s in ("train", "test")}
    n_test = held_out_count(len(docs["train"]["frames"]))
    train, test = iter(docs["train"]["frames"]), iter(docs["test"]["frames"][:n_test])
    order = [next(test) if k % 8 == 0 else next(train) for k in range(len(docs["train"]["frames"]) + n_test)]
    return order, n_test, float(docs["train"]["camera_angle_x"])


def write_capture(lego: Path, out: Path, *, sigma: float, tilt: float, distortion: Optional[list] = None) -> dict:
    """Write lego as a COLMAP text capture under ``out``; returns its world transform and test views.

    Image k (``{k:04d}.png``, linked to lego's file) is test view k/8 when k is a multiple of 8, else the
    next train view. With ``distortion`` (k1, k2, p1, p2) the camera is an OPENCV one with it, and each image
    is written as that camera sees lego's view (:func:`plugins.scenes.undistortion.distorted_view`). A
    camera-to-world ``c2w`` (Blender axes) becomes the COLMAP world-to-camera pose of ``G c2w diag(1, -1, -1, 1)``
    (OpenCV axes), ``G = [sigma Q | SHIFT]``."""
    from scipy.spatial.transform import Rotation

    order, n_test, camera_angle_x = capture_order(lego)
    import imageio.v3 as iio

    width = iio.improps(lego / (order[0]["file_path"] + ".png")).shape[1]
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    q = _rotation(TILT_AXIS, tilt)
    (out / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    intrinsics = [float(focal), float(focal), width / 2, width / 2]
    (out / "sparse" / "0" / "cameras.txt").write_text(
        f"1 {'OPENCV' if distortion else 'PINHOLE'} {width} {width} "
        f"{' '.join(repr(float(v)) for v in [*intrinsics, *(distortion or [])])}\n")
    lines = []
    for k, frame in enumerate(order):
        name = f"{k:04d}.png"
        link = out / "images" / name
        link.unlink(missing_ok=True)
        if distortion:
            from plugins.scenes.undistortion import distorted_view

            iio.imwrite(link, distorted_view(iio.imread(lego / (frame["file_path"] + ".png")), "OPENCV",
                                             [*intrinsics, *distortion]))
        else:
            link.symlink_to((lego / (frame["file_path"] + ".png")).resolve())
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        rot = q @ c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # camera axes in the COLMAP world, OpenCV
        origin = sigma * q @ c2w[:3, 3] + SHIFT
        x, y, z, w = Rotation.from_matrix(rot.T).as_quat()
        pose = " ".join(repr(float(v)) for v in (w, x, y, z, *(-rot.T @ origin)))
        lines.append(f"{k + 1} {pose} 1 {name}\n\n")
    (out / "sparse" / "0" / "images.txt").write_text("".join(lines))
    (out / "sparse" / "0" / "points3D.txt").write_text("")
    return {"sigma": sigma, "tilt_deg": tilt, "shift": SHIFT.tolist(), "rotation": q.tolist(), "n_test": n_test,
            "n_images": len(order)}


def write_points(capture: Path, mesh: Path, written: dict, *, n: int, outliers: float = 0.05) -> int:
    """Write ``points3D.txt`` of ``capture``: ``n`` points sampled on ``mesh`` (lego's frame) and ``outliers``
    x n far ones (6 to 10 units from lego's origin), in the written COLMAP world; returns how many."""
    import trimesh

    rng = np.random.default_rng(0)
    surface = trimesh.sample.sample_surface(trimesh.load(mesh, force="mesh"), n, seed=0)[0]
    d = rng.normal(size=(int(outliers * n), 3))
    far = d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(6, 10, (len(d), 1))
    pts = np.concatenate([np.asarray(surface, dtype=np.float64), far])
    world = written["sigma"] * pts @ np.asarray(written["rotation"]).T + np.asarray(written["shift"])
    (capture / "sparse" / "0" / "points3D.txt").write_text(
        "".join(f"{i + 1} {' '.join(repr(float(v)) for v in p)} 128 128 128 0.5\n" for i, p in enumerate(world)))
    return len(world)


def write_photos(lego: Path, out: Path) -> int:
    """Write the capture's images (the same names and order as :func:`write_capture`) as RGB photos composited
    on white into ``out``, without any poses; returns how many."""
    import imageio.v3 as iio

    capture = out.parent / "lego_colmap" / "images"
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in capture.iterdir())
    for name in names:
        if not (out / name).exists():
            rgba = iio.imread(capture / name).astype(np.float32) / 255.0
            rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
            iio.imwrite(out / name, np.round(rgb * 255.0).astype(np.uint8))
    return len(names)


def sfm_pose_error(run: Path, c2w_of: Callable[[str], Any]) -> dict:
    """:func:`pose_error` of the capture structure from motion made for a ``photos`` (or ``video``) run, with the
    run's SfM figures (scene.json ``sfm``)."""
    scene = json.loads((run / "scene.json").read_text())
    return pose_error(Path(scene["sfm"]["capture"]) / "capture" / "sparse", c2w_of,
                      {k: scene["sfm"][k] for k in ("photos", "registered", "points", "mean_reprojection_error",
                                                    "seconds", "unregistered")})


def pose_error(model: Path, c2w_of: Callable[[str], Any], sfm: dict) -> dict:
    """How far the poses of the sparse model at ``model`` are from the true ones, ``c2w_of(image name)`` (4x4
    camera-to-world, Blender axes); ``sfm``: the SfM figures, passed through. The similarity (Umeyama) that best
    maps the true camera centres onto the found ones is fitted, then fitted again without the cameras more than 5
    times the median distance off it (``misplaced``: registered at a wrong pose); over the others, the median and
    maximum angle between each camera's rotation and the true one mapped, and the distance between the centres
    over the cameras' RMS distance from their centroid."""
    from scipy.spatial.transform import Rotation
    import pycolmap

    rec = pycolmap.Reconstruction(model)
    true, found = [], []
    for im in rec.images.values():
        c2w = np.asarray(c2w_of(im.name), dtype=np.float64)
        w2c = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        rot = np.asarray(w2c.rotation.matrix())  # world -> camera, OpenCV axes
        true.append((c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0]), c2w[:3, 3]))
        found.append((rot.T, -rot.T @ np.asarray(w2c.translation)))
    a = np.stack([t[1] for t in true])
    b = np.stack([f[1] for f in found])
    names = [im.name for im in rec.images.values()]
    inliers = np.ones(len(a), dtype=bool)
    for _ in range(2):  # fit, then refit without the cameras far off it (mis-registered ones)
        rot, scale, shift = _umeyama(a[inliers], b[inliers])
        err = np.linalg.norm(scale * a @ rot.T + shift - b, axis=1)
        inliers = err < 5 * np.median(err)
    spread = np.sqrt(((b[inliers] - b[inliers].mean(0)) ** 2).sum(1).mean())
    angles = np.degrees([Rotation.from_matrix((rot @ t[0]).T @ f[0]).magnitude() for t, f in zip(true, found)])
    return {"registered": len(found), "misplaced": [n for n, ok in zip(names, inliers) if not ok],
            "rotation_error_deg_median": float(np.median(angles[inliers])),
            "rotation_error_deg_max": float(np.max(angles[inliers])),
            "centre_error_relative_median": float(np.median(err[inliers]) / spread),
            "centre_error_relative_max": float(np.max(err[inliers]) / spread),
            "misplaced_centre_error_relative": [float(e / spread) for e in err[~inliers]], "sfm": sfm}


def describe_poses(poses: dict) -> str:
    """One line on :func:`sfm_pose_error`'s figures."""
    sfm = poses["sfm"]
    return (f"structure from motion registered {sfm['registered']} of {sfm['photos']} photos ({sfm['points']} points, "
            f"reprojection error {sfm['mean_reprojection_error']:.2f} px, {sum(sfm['seconds'].values()):.0f} s); "
            f"against lego's poses: rotation {poses['rotation_error_deg_median']:.2f} deg median, "
            f"{poses['rotation_error_deg_max']:.2f} max; centre {100 * poses['centre_error_relative_median']:.2f}% of the "
            f"cameras' spread median, {100 * poses['centre_error_relative_max']:.2f}% max; misplaced: "
            f"{', '.join(poses['misplaced']) or 'none'}")


def _umeyama(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(R, s, t)`` of the similarity ``b ~ s R a + t`` in least squares (Umeyama 1991); ``a``, ``b`` (N, 3)."""
    ma, mb = a.mean(0), b.mean(0)
    u, sv, vt = np.linalg.svd((b - mb).T @ (a - ma) / len(a))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sv) @ d) / ((a - ma) ** 2).sum(1).mean())
    return rot, scale, mb - scale * ma @ rot.T


def residual_rotation_deg(capture: Path, written: dict) -> float:
    """Degrees of the rotation between Blender's frame and the frame the colmap loader maps the capture to."""
    sys.path.insert(0, str(ROOT))
    from pipeline.scenes.colmap import load_colmap

    scene = load_colmap(capture, splits=("test",), max_images=1)
    rot = np.asarray(scene.meta["input_frame"]["rotation"]) @ np.asarray(written["rotation"])
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))


def train(name: str, scene_sets: list[str], args, runs: Path, n_test: Optional[int]) -> dict:
    """``nls reconstruct lego_dense.yaml`` for ``args.steps`` with ``scene_sets`` (then ``args.set``), scored on the
    first ``n_test`` test views (None: all of them)."""
    from scripts.benchmarks._reconstruct import reconstruct

    first = [] if n_test is None else [f"eval.max_images={n_test}"]
    run, wall = reconstruct(name, str(ROOT / "scenes" / "lego_dense.yaml"), runs / name, "--device", "cpu",
                            "--steps", str(args.steps),
                            sets=[*first, "train.checkpoint_every=100000", *scene_sets, *args.set])
    return run_figures(run, wall)


def run_figures(run: Path, wall: Optional[float] = None) -> dict:
    """What :func:`train` reports of the finished ``run`` folder (``wall``: seconds it took, when known)."""
    summary = json.loads((run / "summary.json").read_text())
    scene = json.loads((run / "scene.json").read_text())
    m = summary["metrics"]
    return {"run": str(run), "psnr": m.get("psnr"), "ssim": m.get("ssim"), "n_images": m.get("n_images"),
            "steps": summary["step"], "train_seconds": summary["train_seconds"],
            "wall_seconds": None if wall is None else round(wall, 1), "aabb": scene.get("aabb"),
            "test_views": scene.get("splits", {}).get("test")}


def truth_psnr(run: Path, lego: Path, written: dict, n_test: int) -> float:
    """Mean PSNR (dB) of ``run`` on lego's first ``n_test`` test views as the Blender folder holds them (on white),
    rendered at lego's true cameras carried into the run's frame (the written world ``[sigma Q | SHIFT]``, then
    the loader's ``input_frame.to_run``): one truth for runs whose loaders saw different images (a distorted
    capture, undistorted or read as pinhole cameras)."""
    import argparse

    import torch

    from pipeline.commands.run_loading import open_run
    from pipeline.scenes.blender import load_blender
    from pipeline.types import Cameras

    ld = open_run(argparse.Namespace(run_dir=str(run), host=None, plugins_dir=None, device="cpu", quiet=True))
    test = load_blender(lego, splits=("test",), max_images=n_test).splits["test"]
    to_run = np.asarray(json.loads((run / "scene.json").read_text())["input_frame"]["to_run"], dtype=np.float64)
    written_world = np.eye(4)
    written_world[:3, :3] = written["sigma"] * np.asarray(written["rotation"])
    written_world[:3, 3] = written["shift"]
    m = to_run @ written_world  # Blender's world -> the run's frame: a similarity
    scale = float(np.cbrt(np.linalg.det(m[:3, :3])))
    c2w = test.cameras.c2w.double().numpy().copy()
    c2w[:, :3, 3] = c2w[:, :3, 3] @ m[:3, :3].T + m[:3, 3]
    c2w[:, :3, :3] = (m[:3, :3] / scale) @ c2w[:, :3, :3]
    c = test.cameras
    cams = Cameras(torch.tensor(c2w, dtype=torch.float32), c.fx, c.fy, c.cx, c.cy, c.width, c.height)
    scores = []
    ld.system.eval()
    with torch.no_grad():
        for i in range(len(test)):
            pred = ld.system.renderer.render_image(cams, i, ld.system.chain)["rgb"].clamp(0, 1)
            mse = float(((pred.cpu() - test.images[i]) ** 2).mean())
            scores.append(-10 * math.log10(max(mse, 1e-10)))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py colmap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="training steps of every run (default 1500)")
    ap.add_argument("--sigma", type=float, default=3.7, help="scale of the written COLMAP world")
    ap.add_argument("--tilt", type=float, default=50.0, help="degrees the written world is tilted by")
    ap.add_argument("--only", default="blender,colmap-matched,colmap-auto,colmap-points,photos",
                    help="comma-separated runs")
    ap.add_argument("--points", type=int, default=4000, help="sparse points of colmap-points (default 4000)")
    ap.add_argument("--points-mesh", help="mesh the points are sampled on (default: the blender run's)")
    ap.add_argument("--distortion", type=float, nargs=4, default=[-0.08, 0.01, 0.001, -0.0005],
                    metavar=("K1", "K2", "P1", "P2"), help="the OPENCV distortion of the colmap-distorted runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "colmap.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import shared_data

    lego, skipped = shared_data("colmap", "nerf", "lego")
    if skipped:
        return skipped
    bench = ROOT / "outputs" / "bench" / "colmap"
    capture = bench / "lego_colmap"
    written = write_capture(Path(lego), capture, sigma=args.sigma, tilt=args.tilt)
    box = "[-1.0, -1.3, -0.6, 1.0, 1.3, 1.2]"  # lego_dense.yaml's
    matched = [f"scene.center={json.dumps(SHIFT.tolist())}", f"scene.scale={1 / args.sigma!r}", f"scene.aabb={box}",
               "scene.splits=[train, test]"]
    distorted = bench / "lego_colmap_distorted"
    configs = {
        "blender": [],
        "colmap-matched": ["scene.type=colmap", f"scene.path={capture}", *matched],
        "colmap-distorted": ["scene.type=colmap", f"scene.path={distorted}", *matched],
        "colmap-distorted-pinhole": ["scene.type=colmap", f"scene.path={distorted}", *matched,
                                     "scene.undistort=false"],
        "colmap-auto": ["scene.type=colmap", f"scene.path={capture}", "scene.aabb=null"],
        "colmap-points": ["scene.type=colmap", f"scene.path={bench / 'lego_colmap_points'}", "scene.aabb=null"],
        "photos": ["scene.type=photos", f"scene.path={bench / 'lego_photos'}", "scene.aabb=null"],
    }
    result = {"capture": written, "steps": args.steps, "residual_rotation_deg": residual_rotation_deg(capture, written),
              "runs": {}}
    for name in args.only.split(","):
        if name == "colmap-points":
            mesh = Path(args.points_mesh or Path(result["runs"]["blender"]["run"]) / "meshes" / "mesh.ply")
            write_capture(Path(lego), bench / "lego_colmap_points", sigma=args.sigma, tilt=args.tilt)
            result["points"] = {"mesh": str(mesh), "count": write_points(bench / "lego_colmap_points", mesh, written,
                                                                          n=args.points)}
        if name == "photos":
            write_photos(Path(lego), bench / "lego_photos")
        if name.startswith("colmap-distorted") and not (distorted / "sparse").is_dir():
            write_capture(Path(lego), distorted, sigma=args.sigma, tilt=args.tilt, distortion=args.distortion)
        result["runs"][name] = train(name, configs[name], args, bench / "runs", written["n_test"])
        if name != "photos":  # (photos: a frame of their own, found by structure from motion)
            result["runs"][name]["truth_psnr"] = truth_psnr(Path(result["runs"][name]["run"]), Path(lego), written,
                                                            written["n_test"])
        if name == "photos":
            order = capture_order(Path(lego))[0]
            result["runs"][name]["poses"] = sfm_pose_error(
                Path(result["runs"][name]["run"]), lambda image: order[int(Path(image).stem)]["transform_matrix"])
        print(f"{name}: {json.dumps(result['runs'][name])}", flush=True)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"colmap scene source on lego ({args.steps} steps, {written['n_test']} test views; the "
                    f"loader's frame is {result['residual_rotation_deg']:.2f} deg off Blender's)")
    for col in ("run", "PSNR dB", "on lego's own dB", "SSIM", "steps", "train s", "test views", "box"):
        t.add_column(col)
    for name, r in result["runs"].items():
        truth = f"{r['truth_psnr']:.2f}" if r.get("truth_psnr") is not None else "-"
        t.add_row(name, f"{r['psnr']:.2f}", truth, f"{r['ssim']:.4f}" if r["ssim"] is not None else "-", str(r["steps"]),
                  f"{r['train_seconds']:.0f}", str(r["test_views"]), str([round(v, 2) for v in r["aabb"]]))
    Console().print(t)
    poses = result["runs"].get("photos", {}).get("poses")
    if poses:
        print(f"photos: {describe_poses(poses)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result
