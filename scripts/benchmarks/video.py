"""Benchmark ``video``: the ``video`` scene source on a video of lego, against the same frames with lego's poses.

Lego's 200 test views (one circle around it, rising and falling in elevation), composited on white, are encoded
as an H.264 video (``--fps``, ``--quality``: imageio-ffmpeg's 0-10 scale). Two runs of ``lego_dense.yaml`` for
``--steps`` each:

* ``video``: ``nls reconstruct lego.mp4``: ``--frames`` frames taken (the sharpest of each stretch of equal
  motion), posed by structure from motion (pycolmap, exhaustive matching), the box from the sparse points, every
  8th frame held out (the source's rule);
* ``true-poses``: the very frames it took (decoded from the video, as JPEG), with lego's poses and lego_dense's
  box, written as a Blender folder with the same split.

Both are scored on the same held-out frames, so the gap is what posing the video by structure from motion (the
poses, the estimated focal length, the box) costs. The poses are compared with lego's as the colmap benchmark
does (after the best similarity). Writes outputs/bench/video.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def smeared(k: int) -> bool:
    """Whether view k is smeared in the ``--blur`` video: one of each pair (2j, 2j+1), the first and the second
    by turns (views 0, 3, 4, 7, 8, ...), so taking the first frame of each pair takes half of them."""
    return k % 4 in (0, 3)


def write_video(lego: Path, out: Path, *, fps: int, quality: float, blur: int = 0, pause: int = 0) -> int:
    """Encode lego's test views, composited on white, as the H.264 video ``out``; with ``blur`` > 0 the views
    :func:`smeared` are smeared sideways over ``blur`` pixels, as the camera's turn about lego moves the image
    during the exposure; with ``pause`` > 0 view :data:`PAUSE_AT` is held for that many frames more, as a camera
    standing still. Returns how many frames."""
    import imageio.v3 as iio
    import imageio_ffmpeg
    from scipy.ndimage import uniform_filter1d

    frames = json.loads((lego / "transforms_test.json").read_text())["frames"]
    first = iio.imread(lego / (frames[0]["file_path"] + ".png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(str(out), (first.shape[1], first.shape[0]), fps=fps, quality=quality)
    writer.send(None)
    for k, f in enumerate(frames):
        rgba = iio.imread(lego / (f["file_path"] + ".png")).astype(np.float32) / 255.0
        rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        if blur and smeared(k):
            rgb = uniform_filter1d(rgb, blur, axis=1)
        for _ in range(1 + (pause if k == PAUSE_AT else 0)):
            writer.send(np.ascontiguousarray(np.round(rgb * 255.0).astype(np.uint8)).tobytes())
    writer.close()
    return len(frames) + pause


#: the view the ``--pause`` video holds (a quarter of the way round)
PAUSE_AT = 50


def view_of(pause: int):
    """``view(k)``: lego's test view shown by frame k of a video that holds view :data:`PAUSE_AT` for ``pause``
    frames more."""
    return lambda k: k if k <= PAUSE_AT else PAUSE_AT if k <= PAUSE_AT + pause else k - pause


def compare_takes(lego: Path, video: Path, bench: Path, frames: int, takes: dict[str, dict], marked, pause: int = 0
                  ) -> dict:
    """Frames of ``video`` taken with each of ``takes`` (name: options of ``take_frames``), each posed by structure
    from motion (no training): how many of the frames taken are ``marked(index in the video)``, and the SfM and
    pose figures. ``pause``: the frames the video holds view :data:`PAUSE_AT` for more (:func:`view_of`)."""
    from pipeline.scenes.sfm import run_sfm
    from pipeline.scenes.video_frames import take_frames
    from scripts.benchmarks.colmap import pose_error

    view = view_of(pause)
    out = {}
    for name, options in takes.items():
        folder = bench / name
        shutil.rmtree(folder, ignore_errors=True)  # (a previous run's frames and model)
        taken = take_frames(video, folder / "frames", frames=frames, progress=False, **options)
        (folder / "sfm").mkdir()
        names = sorted(p.name for p in (folder / "frames").iterdir())
        found = run_sfm(folder / "frames", folder / "sfm", names=names, progress=False)
        out[name] = {"marked_taken": sum(marked(k) for k in taken["picked"]),
                     "taken": len(taken["picked"]), "options": options, "take_seconds": taken["seconds"],
                     **pose_error(folder / "sfm" / "capture" / "sparse", frame_pose(lego, view), found)}
    return out


def frame_pose(lego: Path, view=lambda k: k):
    """``c2w_of(frame name)``: lego's test pose of a frame ``frame_NNNNNN.jpg`` (NNNNNN: the frame's index in the
    video, which shows test view ``view(NNNNNN)``)."""
    frames = json.loads((lego / "transforms_test.json").read_text())["frames"]
    return lambda name: frames[view(int(Path(name).stem.split("_")[1]))]["transform_matrix"]


def write_true_poses(run: Path, lego: Path, out: Path) -> int:
    """A Blender folder at ``out`` of the frames the ``video`` run was trained and scored on, with lego's poses:
    the registered frames by name, every 8th (from the first) in ``test``, the rest in ``train``, as the video
    source splits them. Returns how many test frames."""
    scene = json.loads((run / "scene.json").read_text())
    images = Path(scene["frames"]["folder"]) / "images"
    left_out = set(scene["sfm"]["unregistered"])
    names = [p.name for p in sorted(images.iterdir()) if p.name not in left_out]
    angle = json.loads((lego / "transforms_test.json").read_text())["camera_angle_x"]
    c2w_of = frame_pose(lego)
    out.mkdir(parents=True, exist_ok=True)
    for split, chosen in (("test", names[::8]), ("train", [n for k, n in enumerate(names) if k % 8])):
        for n in chosen:
            link = out / split / n
            link.parent.mkdir(exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(images / n)
        doc = {"camera_angle_x": angle,
               "frames": [{"file_path": f"./{split}/{Path(n).stem}", "transform_matrix": c2w_of(n)} for n in chosen]}
        (out / f"transforms_{split}.json").write_text(json.dumps(doc, indent=1))
    return len(names[::8])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py video", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of both runs (default 1000)")
    ap.add_argument("--frames", type=int, default=100, help="frames taken from the video (default 100)")
    ap.add_argument("--fps", type=int, default=24, help="frame rate the video is encoded at (default 24)")
    ap.add_argument("--quality", type=float, default=7.0, help="imageio-ffmpeg's quality, 0-10 (default 7)")
    ap.add_argument("--blur", type=int, default=0, metavar="PX", help="smear one view of each pair sideways over "
                    "PX pixels, and compare taking the sharpest frame of each stretch with taking the first (structure "
                    "from motion only, no training)")
    ap.add_argument("--pause", type=float, default=0.0, metavar="S", help=f"hold view {PAUSE_AT} for S seconds, as a "
                    "camera standing still, and compare frames spaced by motion (the default) with frames spaced by "
                    "time (structure from motion only, no training)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for both runs")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "video.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import print_table, shared_data
    from scripts.benchmarks.colmap import describe_poses, sfm_pose_error, train

    lego, skipped = shared_data("video", "nerf", "lego")
    if skipped:
        return skipped
    lego = Path(lego)
    bench = ROOT / "outputs" / "bench" / "video"
    pause = int(round(args.pause * args.fps))
    video = bench / ("lego_blur.mp4" if args.blur else "lego_pause.mp4" if pause else "lego.mp4")
    result: dict = {"video": {"frames": write_video(lego, video, fps=args.fps, quality=args.quality, blur=args.blur,
                                                    pause=pause),
                              "fps": args.fps, "quality": args.quality, "bytes": video.stat().st_size},
                    "frames": args.frames, "steps": args.steps, "runs": {}}
    if args.blur or pause:
        if args.blur:
            takes = {"blur_sharpest": {"spacing": "time"}, "blur_first": {"sharpest": False, "spacing": "time"},
                     "blur_sharpest_motion": {}}
            marked, what = smeared, "smeared"
        else:
            takes = {"pause_motion": {}, "pause_time": {"spacing": "time"}}
            marked, what = (lambda k: PAUSE_AT < k <= PAUSE_AT + pause), f"from the {args.pause:g} s pause"
        key = "blur" if args.blur else "pause"
        result[key] = {"pixels" if args.blur else "frames": args.blur or pause,
                       **compare_takes(lego, video, bench, args.frames, takes, marked, 0 if args.blur else pause)}
        for name in takes:
            r = result[key][name]
            print(f"{name} ({json.dumps(r['options'])}): {r['marked_taken']} of {r['taken']} frames {what}; "
                  f"{describe_poses(r)}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
        return result
    result["runs"]["video"] = train("video", ["scene.type=video", f"scene.path={video}", f"scene.frames={args.frames}",
                                             "scene.aabb=null"], args, bench / "runs", None)
    run = Path(result["runs"]["video"]["run"])
    result["runs"]["video"]["poses"] = sfm_pose_error(run, frame_pose(lego))
    result["runs"]["video"]["frames"] = {k: v for k, v in json.loads((run / "scene.json").read_text())["frames"].items()
                                         if k in ("decoded", "size", "seconds", "sharpest", "spacing", "still")}
    n_test = write_true_poses(run, lego, bench / "lego_true_poses")
    result["runs"]["true-poses"] = train("true-poses", [f"scene.path={bench / 'lego_true_poses'}"], args,
                                         bench / "runs", None)
    result["held_out"] = n_test
    for name, r in result["runs"].items():
        print(f"{name}: {json.dumps({k: v for k, v in r.items() if k != 'poses'})}", flush=True)

    print_table(f"video source on lego's test path ({result['video']['frames']} views at {args.fps} fps, "
                f"quality {args.quality:g}; {args.frames} frames taken; {args.steps} steps; {n_test} held out)",
                ("run", "PSNR dB", "SSIM", "steps", "train s", "wall s"),
                [(name, f"{r['psnr']:.2f}", f"{r['ssim']:.4f}" if r["ssim"] is not None else "-", str(r["steps"]),
                  f"{r['train_seconds']:.0f}", f"{r['wall_seconds']:.0f}") for name, r in result["runs"].items()])
    print(f"video: {describe_poses(result['runs']['video']['poses'])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result
