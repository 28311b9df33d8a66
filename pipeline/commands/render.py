"""``nls render``: render a split of a run with its trained field, a turntable video, or a camera path."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.run_loading import open_run


def cmd_render(args) -> int:
    """Run ``nls render``: render a split of a run (and a turntable with ``--spiral``, a camera path with
    ``--cameras``); exit code 0. The cameras of each split and turntable rendered are written beside them as
    ``<name>_cameras.json`` (:mod:`pipeline.camera_paths`)."""
    from pipeline.camera_paths import read_camera_path, write_camera_path
    from pipeline.evaluate import EvalContext, check_can_render, check_renderer, eval_indices
    from pipeline.runs import check_writable
    from pipeline.types import NLSError

    if args.loop and not args.interpolate:
        raise NLSError("--loop closes an interpolated path; give --cameras FILE.json --interpolate N with it")
    if args.pace and not args.interpolate:
        raise NLSError(f"--pace {args.pace} spaces the frames of an interpolated path; give --cameras FILE.json "
                       f"--interpolate N with it")
    if args.dataparser_transforms and not args.cameras:
        raise NLSError("--dataparser-transforms goes with --cameras CAMERA_PATH.json (a nerfstudio camera path)")
    if getattr(args, "dataset_frame", None) and not args.dataparser_transforms:
        raise NLSError(f"--dataset-frame {args.dataset_frame} says which frame a nerfstudio dataset is in; it goes "
                       f"with --cameras CAMERA_PATH.json --dataparser-transforms FILE.json")
    if args.interpolate and not args.cameras:
        raise NLSError(f"--interpolate {args.interpolate} makes a path through keyframes; give them with --cameras "
                       f"FILE.json (e.g. a few frames of renders/test_cameras.json)")
    split = args.split or (None if args.cameras else "test")  # --cameras alone renders only its cameras
    ld = open_run(args)
    if split is not None:
        check_can_render(ld.scene, ld.system, split)  # before any folder is made
    check_renderer(ld.system)
    exposure_of = None
    if args.exposure is not None:  # before any folder is made
        from pipeline.exposure import exposure_image

        train = ld.scene.splits.get("train")
        exposure_of = exposure_image(ld.system, list(train.names) if train is not None else [], args.exposure)
    out_root = Path(args.output) if args.output else ld.run.renders_dir
    given = {"supersample": args.supersample, "max_images": args.max_images, "every": args.every}
    ld.cfg.eval = ld.cfg.eval.model_copy(update={k: v for k, v in given.items() if v is not None})
    path, stem = None, None
    if args.cameras:  # read before anything renders: a bad file is said at once
        views = ld.scene.splits.get(split or ld.cfg.eval.split) or next(iter(ld.scene.splits.values()), None)
        size = (views.cameras.width, views.cameras.height) if views is not None else None
        transforms = args.dataparser_transforms
        to_run = _dataset_frame(ld, args) if transforms else None
        path = read_camera_path(Path(args.cameras), size, Path(transforms) if transforms else None)
        if to_run is not None:  # (the dataset's frame, the input's, to the run's)
            from dataclasses import replace

            from pipeline.dataset_export import moved_cameras

            import torch

            c2w, _ = moved_cameras(path[0].c2w.double().numpy(), to_run)
            path = (replace(path[0], c2w=torch.from_numpy(c2w).to(path[0].c2w.dtype)), path[1])
        if args.interpolate:
            from pipeline.camera_paths import interpolate_cameras

            path = (interpolate_cameras(path[0], args.interpolate, loop=args.loop,
                                        pace=args.pace or "distance"),
                    [f"{k:04d}" for k in range(args.interpolate)])
        if args.every or args.max_images:  # given on the command line (the run's eval settings are for its split)
            keep = eval_indices(len(path[1]), args.every or 1, args.max_images)
            path = (path[0].select(keep), [path[1][i] for i in keep])
        stem = Path(args.cameras).stem  # (renders/test/ holds a split: a path file test.json goes to test_path/)
        stem = f"{stem}_path" if stem in ld.scene.splits or stem == "turntable" else stem
        check_writable(out_root / stem)
    if split is not None:
        check_writable(out_root / split)
        ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, split=split,
                          out_dir=out_root / split, save_depth=args.depth, progress=not args.quiet,
                          exposure_of=exposure_of)
        pairs = ctx.renders()
        views = ld.scene.splits[split]
        shown = eval_indices(len(views), ld.cfg.eval.every, ld.cfg.eval.max_images)
        names = [views.names[i] if i < len(views.names) else f"{i:03d}" for i in shown]
        write_camera_path(out_root / f"{split}_cameras.json", views.cameras.select(shown), names)
        raw = " and depth/opacity .npy arrays" if args.depth else ""
        look = f", through the exposure of training image {args.exposure}" if exposure_of is not None else ""
        print(f"wrote {len(pairs)} {split} renders (prediction | ground truth | depth){raw}{look} to "
              f"{out_root / split} (their cameras: {out_root / f'{split}_cameras.json'})")
    if args.spiral:
        from pipeline.video import render_turntable

        video = render_turntable(ld, args.spiral, out_root, progress=not args.quiet,
                                 supersample=ld.cfg.eval.supersample, exposure_of=exposure_of)
        print(f"wrote turntable video: {video} (its cameras: {out_root / 'turntable_cameras.json'})")
    if path is not None:
        from pipeline.video import render_camera_path

        folder, video = render_camera_path(ld, *path, out_root / stem, fps=args.fps, progress=not args.quiet,
                                           supersample=ld.cfg.eval.supersample, depth=args.depth,
                                           exposure_of=exposure_of)
        print(f"wrote {len(path[1])} frames of {args.cameras}" + (" with depth/opacity .npy arrays" if args.depth else "")
              + f" to {folder}" + (f" and the video {video}" if video else ""))
    return 0


def _dataset_frame(ld, args):
    """For ``--dataparser-transforms``: the (4, 4) similarity from the frame of the nerfstudio dataset's
    transforms.json to the run's, or None where they are one (a run on that transforms.json; ``--dataset-frame
    run``, the frame of ``nls export RUN --dataset``). A run that trained in a frame normalised from its input (a
    COLMAP capture, photos, a video, a mesh) needs ``--dataset-frame``: ``input`` is the input's frame
    (``--dataset --frame input``), taken to the run's by its ``input_frame``."""
    from pipeline.types import NLSError

    frame = ld.scene.meta.get("input_frame")
    if not isinstance(frame, dict) or args.dataset_frame == "run":
        return None
    if args.dataset_frame is None:
        raise NLSError(f"--dataparser-transforms takes a nerfstudio path to the frame of its dataset's "
                       f"transforms.json, and this run trained in a frame normalised from {frame.get('file')}: if the "
                       f"nerfstudio dataset is this run's nls export --dataset, add --dataset-frame run (or input, for "
                       f"--dataset --frame input); a nerfstudio dataset of its own (ns-process-data) is in another "
                       f"frame: render its paths with a run on that dataset's transforms.json (scene type blender)")
    return frame["to_run"]
