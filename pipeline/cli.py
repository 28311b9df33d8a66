"""The ``nls`` command line. Heavy modules (torch, nerfacc, trimesh) load inside commands only."""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
from typing import Optional

from pipeline import __version__, notices
from pipeline.commands.evaluation import cmd_eval
from pipeline.commands.export import cmd_export
from pipeline.commands.plugins import cmd_new_plugin, cmd_plugins
from pipeline.commands.render import cmd_render
from pipeline.commands.review import cmd_compare, cmd_report, cmd_view
from pipeline.commands.run_loading import host_for
from pipeline.commands.training import cmd_reconstruct, cmd_resume
from pipeline.types import NLSError, is_out_of_memory

EPILOG = """\
examples:
  nls reconstruct scenes/csg_dense.yaml                 train, render, export and evaluate
  nls reconstruct scenes/csg_dense.yaml --steps 200 --set field.resolution=64
  nls reconstruct /data/garden --steps 2000             a data folder (Blender, instant-ngp, NeuS, COLMAP) or mesh
  nls reconstruct photos/                               photos without poses: structure from motion first
  nls reconstruct photos/ --set scene.masks=masks       ... each composited on white by its object mask
  nls reconstruct walk.mp4 --set scene.start=2          a video: the sharpest frames, then posed as photos
  nls reconstruct scan.ply                              a point cloud: a surface through it
  nls reconstruct scenes/lipschitz_spot.yaml --data scan.ply   a scene file's method on other data
  nls reconstruct scenes/lego_hash.yaml --val-every 250 --tensorboard   a held-out view's PSNR while training
  nls resume outputs/csg/dense_grid/<stamp>             continue a stopped run to its step budget
  nls render outputs/csg/dense_grid/<stamp> --spiral 60 test renders and a turntable video
  nls export outputs/csg/dense_grid/<stamp> -o mesh.ply --resolution 384
  nls eval outputs/csg/dense_grid/<stamp>               metrics table, and eval.json
  nls plugins --all                                     what every plugin provides, with options
  nls plugins marching_cubes                            one component (or plugin) with its options
  nls plugins --config                                  the train:, eval:, output:, reference: keys
  nls batch scenes/a.yaml scenes/b.yaml --jobs 2        many scenes, one run folder each, one table
  torchrun --nproc_per_node 2 -m pipeline.cli reconstruct SCENE.yaml   data-parallel training (DDP)

environment: NLS_DATA (data root), NLS_CACHE (rendered-scene cache), NLS_LOAD_PLUGINS,
NLS_TRACE_PLUGINS=1, NLS_THREADS (CPU threads), NLS_DIST_TIMEOUT (seconds for torchrun collectives, default 600).
"""


# -- parser ------------------------------------------------------------------------------

def _float_arg(text: str, ok, want: str) -> float:
    """``text`` as a finite float for which ``ok(value)`` holds, else a usage error asking for ``want``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text}: give {want}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (not nan or inf), else a usage error."""
    return _float_arg(text, lambda v: True, "a finite number")


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0, else a usage error."""
    return _float_arg(text, lambda v: v > 0, "a number of seconds > 0")


def pixels(text: str) -> float:
    """argparse type: a finite number of pixels >= 0, else a usage error."""
    return _float_arg(text, lambda v: v >= 0, "a number of pixels >= 0")


def int_at_least(low: int, high: Optional[int] = None):
    """argparse type: an integer >= ``low`` (and <= ``high``), else a usage error naming the bounds."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            want = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {want}")
        return value
    parse.__name__ = "int"
    return parse


def build_parser(host=None) -> argparse.ArgumentParser:
    """The ``nls`` argument parser with every built-in subcommand, plus those ``host``'s plugins add
    when a host is given."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugins-dir", action="append", metavar="DIR",
                        help="load every .py file in DIR as a plugin (repeatable)")
    p = argparse.ArgumentParser(prog="nls", description="Reconstruct 3D scenes and shapes as level sets of "
                                "neural fields, on a NeRF backend. Every method is a plugin.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[common])
    p.add_argument("--version", action="version", version=f"nls {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("reconstruct", parents=[common], help="train a scene, then render, export and evaluate",
                       description="Validate SCENE.yaml, train it, render the eval split, export a mesh, "
                       "evaluate, and write everything to a new run folder.")
    r.add_argument("scene", metavar="SCENE.yaml", help="scene config (see scenes/), or data: a Blender or "
                   "instant-ngp folder, an IDR / NeuS folder (DTU: image/ and cameras_sphere.npz), a COLMAP capture, a folder of photos without poses (posed by structure from motion "
                   "with pycolmap, once, cached), a video (.mp4, .mov, ...: frames taken, then posed as photos) or a "
                   "mesh file, reconstructed with the default scene "
                   "(pipeline/data_scene.py: a CPU-sized dense grid, 5000 steps; --set field.type=hash_grid on a GPU), "
                   "or a point-cloud file (.ply without faces, .xyz, .pts, .npy), fitted with sample networks "
                   "(3000 steps; with its normals too, if it has them) and scored against its points")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=500 --set field.resolution=64; "
                   "a new block type (--set field.type=hash_grid) drops the old type's options")
    r.add_argument("--data", metavar="PATH", help="train SCENE.yaml's method and settings on this data instead of "
                   "its own (any data path SCENE.yaml itself may be: a Blender, instant-ngp, IDR / NeuS or COLMAP folder, a mesh "
                   "or a point-cloud file): the scene block becomes the source that reads PATH, with its defaults (--set "
                   "scene.* sets its options), the run is named "
                   "after it, and point_fit is added where PATH gives points, e.g. to compare methods on one scan: "
                   "nls reconstruct scenes/lipschitz_spot.yaml --data scan.ply")
    r.add_argument("-o", "--output", metavar="DIR", help="runs root (default: the scene's output.root, 'outputs')")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the scene's train.device "
                   "(auto: cuda when available, else cpu)")
    r.add_argument("--steps", type=int_at_least(1), metavar="N",
                   help="training steps (same as --set train.steps=N; default: the scene's train.steps)")
    r.add_argument("--val-every", type=int_at_least(1), metavar="N",
                   help="every N steps, render a held-out view at preview size while training: its PSNR goes to "
                   "metrics.jsonl and the progress bar, the image to renders/progress/ (same as --set "
                   "train.val_every=N; train.val_split, val_views and val_max_side choose what is rendered). A run "
                   "without images (a point cloud, a mesh as geometry) meshes its field instead and logs the mesh's "
                   "Chamfer-L1 against the ground truth or the input points (train.val_geometry, val_resolution)")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write the logged metrics and validation images as TensorBoard events in "
                   "RUN/tensorboard/, for tensorboard --logdir outputs (same as --set train.tensorboard=true; "
                   "needs pip install '.[tensorboard]')")
    r.add_argument("--wandb", action="store_true",
                   help="also send the logged metrics and validation images to a Weights & Biases run named after "
                   "the run folder, in project train.wandb_project (default nls); same as --set train.wandb=true; "
                   "needs pip install '.[wandb]' and `wandb login`, or WANDB_MODE=offline for a later wandb sync")
    r.add_argument("--no-eval", action="store_true", help="stop after training")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars (training and rendering)")
    r.set_defaults(func=cmd_reconstruct)

    def run_cmd(name, func, help_, desc, target="a run folder made by `nls reconstruct`"):
        c = sub.add_parser(name, parents=[common], help=help_, description=desc)
        c.add_argument("run_dir", metavar="RUN_DIR", help=target)
        c.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the run's train.device "
                            "(auto: cuda when available, else cpu)")
        c.set_defaults(func=func)
        return c

    c = run_cmd("resume", cmd_resume, "continue a stopped run to its step budget",
                "Load the newest checkpoint of RUN_DIR and train to the run's step budget (never past it), "
                "then evaluate. On CPU, with a step budget, the result is bit-identical to a run that was never "
                "stopped; to train longer, start a new run with a larger --steps (the learning-rate schedule "
                "spans the budget).")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars (training and rendering)")
    c.add_argument("--no-eval", action="store_true", help="stop after training")
    c = run_cmd("render", cmd_render, "render a split, a turntable video or a camera path",
                "Render a split of the scene with the trained field: prediction, ground truth and depth; the "
                "cameras of each split and turntable rendered are written beside them (NAME_cameras.json), in "
                "the format --cameras reads.")
    c.add_argument("--split", help="split to render (default: test; none when --cameras is given alone)")
    c.add_argument("--spiral", type=int_at_least(0, 3600), default=0, metavar="N",
                   help="also render an N-frame turntable video, 0..3600 frames: a circle around the scene at the "
                   "mean distance of the eval split's cameras, with the renders' --supersample (default 0: none)")
    c.add_argument("--depth", action="store_true",
                   help="also write float32 (H, W) arrays: NAME_depth.npy, the expected distance along the "
                   "unit pixel ray given termination; NAME_depth_median.npy, where half the ray's opacity is "
                   "reached (volume renderers; it stays on the surface where the expected depth of a soft "
                   "density lies behind it); and NAME_opacity.npy, the accumulated opacity; for the split's views "
                   "and the --cameras frames")
    c.add_argument("--supersample", type=int_at_least(1, 4), metavar="S",
                   help="S x S rays per pixel, averaged, S in 1..4 (default: the run's eval.supersample)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument("--max-images", type=int_at_least(1), metavar="N",
                   help="render the first N views only (after --every; default: the run's eval.max_images, else all); "
                   "given, it thins the frames of --cameras too (not --spiral, whose count sets its frames)")
    c.add_argument("--every", type=int_at_least(1), metavar="K",
                   help="render every K-th view of the split (0, K, 2K, ...; default: the run's eval.every); given, "
                   "every K-th frame of --cameras too (after --interpolate), e.g. a quick preview of a long path")
    c.add_argument("--cameras", metavar="FILE.json",
                   help="render the cameras of a transforms.json (frames with a 4x4 camera-to-world "
                   "transform_matrix, OpenGL axes, in the run's frame; fl_x/fl_y/cx/cy or camera_angle_x, w/h, for "
                   "the file or each frame; missing ones from the eval split) into DIR/FILE/NAME.png and the video "
                   "DIR/FILE.mp4; the *_cameras.json files nls render writes are such files")
    c.add_argument("--dataparser-transforms", metavar="FILE.json",
                   help="with --cameras CAMERA_PATH.json made in nerfstudio's viewer: the dataparser_transforms.json "
                   "of that nerfstudio run (beside its config.yml), which takes the path's cameras from nerfstudio's "
                   "frame back to its dataset's; the nls run must be on that dataset's transforms.json, or the "
                   "dataset must be this run's nls export --dataset (say which frame with --dataset-frame)")
    c.add_argument("--dataset-frame", choices=["run", "input"],
                   help="with --dataparser-transforms, for a run on a COLMAP capture, photos or a video (which "
                   "trains in a normalised frame): the frame of the nerfstudio dataset's transforms.json, run for "
                   "nls export RUN --dataset (the default export), input for --dataset --frame input (the COLMAP "
                   "model's coordinates)")
    c.add_argument("--interpolate", type=int_at_least(2, 3600), metavar="N",
                   help="with --cameras: take its cameras as keyframes and render N frames along a smooth path "
                   "through them (centres on a cubic spline, orientations on a rotation spline, intrinsics "
                   "linear), first to last")
    c.add_argument("--pace", choices=["distance", "keyframes"],
                   help="with --interpolate: how the frames fall along the path. distance (default): evenly by the "
                   "distance travelled and the angle turned, however unevenly the keyframes lie; keyframes: as many "
                   "frames between any two keyframes, so the camera slows where they are close together")
    c.add_argument("--loop", action="store_true",
                   help="with --interpolate: go on from the last keyframe back to the first, closing the path as "
                   "smoothly as anywhere else, so the video repeats without a seam")
    c.add_argument("--fps", type=int_at_least(1, 120), default=24, metavar="F",
                   help="frames per second of the --cameras video (default 24)")
    c.add_argument("--exposure", metavar="IMAGE",
                   help="for a run that learned each photo's exposure (train.exposure): render every view, "
                   "turntable frame and --cameras frame through the colour transform of this training image (its "
                   "name, e.g. from exposure.json, or its index), as that photo's camera would have shot them; "
                   "default: the average camera (the identity)")
    c.add_argument("-o", "--output", metavar="DIR", help="default: RUN_DIR/renders")
    c = run_cmd("export", cmd_export, "extract and export a mesh (or a point cloud)",
                "Marching cubes on the field (SDF level, density threshold or occupancy 0.5); the format "
                "follows the file extension (.ply .obj .glb .stl .off). --faces simplifies it, --colors or "
                "--texture colours it; --points writes a point cloud from the training views instead.",
                target="a run folder made by `nls reconstruct`; with --dataset also a scene file or data path (a "
                "COLMAP capture, photos, a video, a Blender or NeuS folder): its views as nls reconstruct would load "
                "them (posed, undistorted, fitted), converted without training")
    c.add_argument("-o", "--output", required=True, metavar="MESH", help="output file, e.g. mesh.ply")
    c.add_argument("--resolution", type=int_at_least(16, 1024), metavar="N",
                   help="grid samples per side, 16..1024 as in the extractor's config (default: the scene's)")
    c.add_argument("--level", type=finite_float, metavar="L", help="iso-level (default: the extractor's)")
    c.add_argument("--bbox", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="box to mesh (default: the extractor's, else the scene box)")
    c.add_argument("--colors", action="store_true",
                   help="bake vertex colours: the field's radiance at each vertex, seen as the training views saw it "
                   "(--color-from) (.ply, .obj: as the images, sRGB; .glb: linear, as glTF defines them; runs "
                   "trained on images)")
    c.add_argument("--texture", type=int_at_least(64, 8192), metavar="SIZE",
                   help="bake the field's colour into a SIZE x SIZE texture instead (a UV atlas made with xatlas; "
                   "each texel the colour at its point on the surface, seen as --color-from says): .glb "
                   "embeds it, .obj writes NAME.mtl and NAME.png beside it; runs trained on images; pip install "
                   "'.[export]'")
    c.add_argument("--color-from", choices=["views", "normal"], default="views",
                   help="the direction a surface point's colour is seen from. views (default): the mean along the "
                   "rays of the training cameras that see it (in their image, facing them, not hidden by the "
                   "mesh; at most 32 cameras, spread over the set), the inward normal where none does; normal: "
                   "along the inward normal everywhere (faster; a direction the training rays may never have "
                   "come from)")
    c.add_argument("--points", type=int_at_least(1), metavar="N",
                   help="write a point cloud (.ply) instead of a mesh: N points where the training views' rays "
                   "reach the surface (their median depth, rendered at a reduced size), with the rendered colour "
                   "and the field's normal; --bbox crops, --frame and --up apply; runs trained on images")
    c.add_argument("--dataset", action="store_true",
                   help="write the run's data instead of a mesh: -o names a new folder that gets a transforms.json "
                   "(instant-ngp / nerfstudio) of every split's images as the run loaded them (undistorted, fitted, "
                   "downscaled), their cameras as the trained run sees them (refined poses and focal lengths), "
                   "its ignore masks, depth maps and ground-truth mesh; for training other methods, or nls itself, "
                   "on the same data. --frame input writes the cameras in the input's frame")
    c.add_argument("--dataset-format", choices=["nerfstudio", "neus"], default="nerfstudio",
                   help="with --dataset: nerfstudio (default: transforms.json, as above) or neus: the IDR / NeuS "
                   "layout of neural surface reconstruction codes (image/, mask/, cameras_sphere.npz), the train "
                   "views in the folder and each other split in a sub-folder of its own, the scene box inside the "
                   "unit sphere of the normalised frame (no depth maps)")
    c.add_argument("--faces", type=int_at_least(4), metavar="N",
                   help="simplify the mesh to about N faces (quadric error decimation, fast-simplification) before "
                   "colouring and writing it; pip install '.[export]'")
    c.add_argument("--up", choices=["y", "z"],
                   help="the run's up axis; z turns the mesh so +Y is up, as glTF and most viewers take it. "
                   "Default: for .glb, the run's own up axis (z for NeRF-synthetic scenes such as lego and for "
                   "the scenes nls renders itself, whose worlds are +Z up); for other formats, and with "
                   "--frame input, y: the coordinates as they are")
    c.add_argument("--frame", choices=["run", "input"], default="run",
                   help="run (default): the coordinates as trained, which line up with the scene's ground-truth "
                   "mesh (for mesh, geometry and scan scenes: the input normalised to a box of side "
                   "scene.extent, centred); input: mapped back to the coordinates of the input mesh or point "
                   "file, so the mesh lies on it (those scenes only), or of a colmap scene's COLMAP model. --bbox "
                   "is in the run's frame either way")
    c.add_argument("--close", action="store_true",
                   help="cap the mesh with the box's faces where the shape reaches the box (e.g. a --bbox crop), "
                   "so it is closed (the extractor's close option; default: the run's, usually off)")
    c.add_argument("--visual-hull", type=pixels, metavar="PX",
                   help="cut the mesh to the visual hull of the training views' object masks (their alpha), grown "
                   "by PX pixels (e.g. 2): faces that fall off the object in some view that sees them are dropped "
                   "(floaters, the table under a masked object), as DTU evaluations clean meshes")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress")
    c = run_cmd("eval", cmd_eval, "evaluate a run (PSNR/SSIM, Chamfer, ...)",
                "Run the scene's evaluators on the newest checkpoint and write JSON (exit 1 when every evaluator "
                "was skipped, e.g. Chamfer on a scene without a ground-truth mesh). --set may change "
                "what evaluation reads (evaluators, eval.*, extractor.*, renderer.samples_per_ray, and scene.splits "
                "on scenes loaded from a dataset folder such as blender), e.g. "
                "--set 'evaluators=[{type: psnr}]' --set eval.supersample=2, --set renderer.samples_per_ray=1024 "
                "for a finer ray step than training's, or --set eval.split=val --set 'scene.splits=[train, test, "
                "val]' for a split of the data that training did not load; the trained model is never changed.")
    c.add_argument("-o", "--output", metavar="FILE", help="default: RUN_DIR/eval.json (the run's own records, "
                   "such as summary.json, are refused); its renders go to <FILE stem>_renders/<split> beside it")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an evaluation option of the run's config (repeatable)")
    c.add_argument("--renders", metavar="DIR",
                   help="score another method's renders of the eval views instead of the run's own: each view's "
                   "NAME.png (or .jpg, .tif, ...) anywhere under DIR, against the run's ground truth with the run's "
                   "psnr evaluator (its masks and options), e.g. a method trained on nls export RUN --dataset; "
                   "default output RUN_DIR/eval_<DIR name>.json")
    c.add_argument("--mesh", metavar="FILE",
                   help="score another method's mesh instead of the run's own: FILE (PLY, OBJ, OFF, ...) with the "
                   "run's geometry evaluators (chamfer, dtu, point_fit: those that read the mesh alone) and their "
                   "options, e.g. NeuS's mesh of the same scan; default output RUN_DIR/eval_<FILE stem>.json")
    c.add_argument("--mesh-frame", choices=("input", "run"), default="input",
                   help="the coordinates of --mesh: input (default), those of the data the run was made from (a "
                   "DTU scan's world frame, a COLMAP model's; moved by the scene's input frame), or run, the run's "
                   "own (nls export RUN without --frame input)")
    c.add_argument("--no-wandb", dest="wandb", action="store_false",
                   help="a run trained with train.wandb gets this evaluation's metrics in its W&B run's summary "
                   "(eval/psnr, ...; with -o FILE, FILE's stem before the key); this leaves W&B alone")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("plugins", parents=[common], help="list plugins and the components they provide",
                       description="List the loaded plugins (built-ins, installed entry points, --plugins-dir "
                       "files) with the components each registers: stage, what it consumes and produces, and "
                       "its description; --all adds every option with its type, default and help. NAME shows "
                       "one component (its whole description and options) or one plugin (its table and "
                       "options); a name that is both shows each. --config "
                       "lists the keys of the scene file's train:, eval:, output: and reference: blocks the same way.")
    c.add_argument("name", nargs="?", metavar="NAME",
                   help="a component (e.g. marching_cubes) or plugin (e.g. ngp) to show with its options; with "
                   "--json: {\"components\": [...], \"plugins\": [...]}, entries as in --all --json. --all is implied; not with "
                   "--hook or --config")
    c.add_argument("--all", action="store_true", help="also show every component's options")
    c.add_argument("--config", action="store_true",
                   help="list the scene file's train:, eval:, output: and reference: keys with their types, "
                   "defaults and help (instead of the plugins)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--hook", metavar="HOOK",
                   help="only plugins implementing this hook, e.g. nls_register_losses (or register_losses, or the stage: losses)")
    c.set_defaults(func=cmd_plugins)

    c = sub.add_parser("new-plugin", help="create a pip-installable plugin package with a passing test",
                       description="Write DIR/nls-NAME/ (with each _ of NAME written as -): a pyproject.toml declaring "
                       "the `nls` entry point, a plugin module nls_NAME/plugin.py registering one example loss "
                       "with its config, and tests: the loss's value, and a few steps of the tiny scene with "
                       "it. Install it with pip install -e and it appears in `nls plugins`; then run pytest. Without "
                       "installing it, --plugins-dir DIR/nls-NAME/nls_NAME loads it (as plugin NAME). "
                       "The hooks of the other stages are documented in pipeline/hookspecs.py and listed by "
                       "`nls plugins --all`.")
    c.add_argument("name", help="plugin name: a lowercase letter, then a-z or 0-9, with single _ between "
                   "(at most 64 characters), e.g. my_method")
    c.add_argument("--dir", default=".", help="parent folder (default: here)")
    c.set_defaults(func=cmd_new_plugin)

    from pipeline.batch import add_parser as add_batch_parser

    add_batch_parser(sub, common)

    c = sub.add_parser("report", parents=[common], help="write a self-contained HTML report of a run",
                       description="One HTML file with the config, metrics (next to published figures from the "
                       "config's reference: block), training curves, test renders against ground truth with error "
                       "maps, depth and normal maps, field slices, a mesh turntable and provenance. Images are "
                       "embedded; opening it needs no network. Runs killed midway get a report too, saying what "
                       "is missing.")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `nls reconstruct`")
    c.add_argument("-o", "--output", metavar="FILE", help="output HTML file, ending in .html or .htm "
                   "(default: RUN_DIR/report.html)")
    c.add_argument("--no-model", action="store_true",
                   help="do not rebuild the model from its checkpoint (no slices or normal maps; faster)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", parents=[common], help="compare runs side by side (metrics, time, parameters)",
                       description="A table of final metrics, training time and parameter count over runs, best "
                       "values marked. Warns when the runs' scenes, scene settings or evaluation settings differ. "
                       "Prints a terminal table unless --markdown, --json, --html or -o FILE is given.")
    c.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                   help="run folders made by `nls reconstruct`, or the JSON of `nls eval RUN --renders DIR` (another "
                   "method's renders of RUN's eval views, scored as RUN is: a column renders:DIR) or of `nls eval RUN "
                   "--mesh FILE` (another method's mesh: a column mesh:FILE)")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown",
                     help="print a Markdown table")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    fmt.add_argument("--html", dest="format", action="store_const", const="html",
                     help="print a self-contained HTML page (or write one with -o FILE.html)")
    c.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE instead of printing; the format follows its extension (.html/.htm: HTML, "
                   ".json: JSON, anything else: Markdown) unless --markdown, --json or --html is given")
    c.set_defaults(func=cmd_compare, format="rich")

    c = sub.add_parser("view", parents=[common], help="interactive 3D viewer in the browser (viser)",
                       description="Serve an interactive viewer of RUN_DIR on http://127.0.0.1:PORT (localhost "
                       "only): the exported mesh, training cameras as frustums, the input point cloud, and a "
                       "slider that re-extracts the mesh at another level; for runs trained on images, a button that "
                       "renders the field from the browser's view. Ctrl-C stops it. Needs the optional "
                       "extra: pip install '.[viewer]'.")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `nls reconstruct`")
    c.add_argument("--port", type=int_at_least(0, 65535), default=8080, metavar="P",
                   help="port on 127.0.0.1 (default: 8080; 0 picks a free one; a port in use moves to the next "
                   "free one, and the command says so)")
    c.add_argument("--resolution", type=int_at_least(16, 512), default=128, metavar="N",
                   help="grid samples per side cached for re-extraction at other levels, 16..512 (default: 128)")
    c.add_argument("--seconds", type=positive_seconds, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    c.set_defaults(func=cmd_view)

    if host is not None:
        host.add_commands(sub)
    for parser in (p, *sub.choices.values()):
        accept_negative_numbers(parser)
    return p


#: option values that are negative numbers in any float notation (argparse 3.11 knows only -1 and -1.5,
#: so ``--level -2e-3`` was read as an unknown option); -inf and -nan too, so their checks can name them
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` take ``-2e-3`` or ``-inf`` as an option's value, as it takes ``-0.002`` (no nls
    option looks like a negative number, so none is shadowed)."""
    parser._negative_number_matcher = NEGATIVE_NUMBER


#: glibc ``mallopt`` parameters and the values nls sets (see :func:`keep_freed_memory`)
MALLOPT = {"M_MMAP_THRESHOLD": (-3, 32 * 2 ** 20), "M_TRIM_THRESHOLD": (-1, 256 * 2 ** 20),
           "M_TOP_PAD": (-2, 64 * 2 ** 20)}


def keep_freed_memory() -> bool:
    """Let glibc keep freed buffers of up to 32 MiB for reuse instead of returning them to the OS.

    Training allocates and frees grid-sized buffers (the ngp dense grid's 33 MB table gradient and Adam
    temporaries) every step; glibc serves buffers this large with mmap and unmaps them on free, so every
    step paid fresh page faults. Measured on the demo scene (csg_dense, 2 cores): 122.7 s -> 90.0 s, system
    time 45 s -> 7 s, checkpoints bit-identical. Skipped off glibc, and when the environment already tunes
    the allocator (``MALLOC_MMAP_THRESHOLD_`` ...). Returns whether it was applied."""
    import ctypes

    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt parameters of these numbers)
    except (OSError, AttributeError):
        return False
    return all(libc.mallopt(code, value) == 1 for code, value in MALLOPT.values())


def _rank_tag(message: str) -> str:
    """``"[rank R/W] "`` under torchrun, for an error message that does not start with one: every rank
    prints its own, and identical untagged lines read as one process repeating itself."""
    from pipeline import distributed

    try:
        tag = distributed.from_env().tag()
    except NLSError:  # a broken torchrun environment is itself the error being printed
        return ""
    return "" if message.startswith("[rank ") else tag


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an argument that the command does not take is reported by the
    command's own parser (``nls render: error: ...`` and its usage), not by ``nls``'s."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        (commands.get(getattr(args, "command", None)) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """The ``nls`` entry point: parse ``argv`` (default ``sys.argv[1:]``) and run its command; returns the
    exit code (an NLSError's ``exit_code``, 130 on Ctrl-C, 141 on a closed pipe, 0 for help)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP threads that spin-wait slow other processes on shared cores
    keep_freed_memory()
    _one_line_warnings()
    notices.reset()  # the warnings this command's run keeps for its summary
    argv = sys.argv[1:] if argv is None else argv
    try:
        # plugin modules register names only (no torch), so building the host here is cheap and
        # lets plugin subcommands appear in `nls --help`
        dirs = _plugins_dirs(argv)
        host = host_for(argparse.Namespace(plugins_dir=dirs))
        parser = build_parser(host)
        args = _parse(parser, argv)
        # argparse drops a --plugins-dir given before the subcommand (the subcommand's default
        # overwrites it), and the scan above misses abbreviations such as --plugins-d DIR: keep both
        extra = [d for d in (getattr(args, "plugins_dir", None) or []) if d not in dirs]
        if extra:
            dirs = dirs + extra
            host = host_for(argparse.Namespace(plugins_dir=dirs))
        args.plugins_dir, args.host = dirs, host
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except NLSError as exc:
        print(f"error: {_rank_tag(str(exc))}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        print(f"error: out of memory ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no details'}); "
              f"lower the sizes of the command (rays per batch, samples per ray, eval.chunk, --resolution) "
              f"or free the device", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `nls ... | head`: the reader left; stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not raise again
        return 141
    except OSError as exc:  # after BrokenPipeError, an OSError too
        if exc.errno != errno.ENAMETOOLONG:
            raise
        print(f"error: a file name is too long ({exc.filename or exc}): each part of a path may have at most "
              f"255 bytes; give a shorter path", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _one_line_warnings() -> None:
    """Warnings that nls's own code (pipeline/, plugins/) issues print as one ``warning: ...`` line, as
    its other warnings do, instead of Python's file:line form with a line of source, and are kept for
    the run's summary (:mod:`pipeline.notices`); other packages' warnings keep Python's form."""
    import warnings

    from pipeline.scenes import repo_root

    default = warnings.showwarning
    if getattr(default, "nls_one_line", False):  # installed by an earlier main() of this process
        return
    ours = tuple(str(repo_root() / d) for d in ("pipeline", "plugins"))

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(ours):
            print(f"warning: {message}", file=file or sys.stderr)
            notices.keep(str(message))
        else:
            default(message, category, filename, lineno, file, line)

    show.nls_one_line = True
    warnings.showwarning = show


def _leave_process_group() -> None:
    """Destroy a torch.distributed process group that an error path left open.

    Exiting with a live gloo group lets its worker threads be torn down by static destructors,
    which aborts the process ("terminate called without an active exception", exit -6) instead
    of returning the error's exit code.
    """
    if "torch.distributed" in sys.modules:
        from pipeline import distributed

        try:
            distributed.shutdown()
        except Exception:  # torch half-imported (Ctrl-C while it loaded): it holds no group to leave
            pass


def _plugins_dirs(argv: list[str]) -> list[str]:
    """The ``--plugins-dir DIR`` and ``--plugins-dir=DIR`` values of ``argv``, in order."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugins-dir" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugins-dir="):
            out.append(a.split("=", 1)[1])
    return out


if __name__ == "__main__":
    sys.exit(main())
