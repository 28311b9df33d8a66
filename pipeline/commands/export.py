"""``nls export``: extract a run's mesh and write it, optionally in the input file's frame, turned +Y up,
closed at the box, simplified, or with baked vertex colours or a baked texture."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from pipeline.commands.run_loading import Loaded, open_run
from pipeline.types import NLSError


def cmd_export(args) -> int:
    """Run ``nls export``: extract a run's mesh and write it to ``-o``; exit code 0."""
    from pipeline.evaluate import EvalContext, extract
    from pipeline.mesh import (COLOR_FORMATS, bake_vertex_colors, check_mesh_path, export_mesh, progress_default,
                               read_back_watertight, weld_for_format)
    from pipeline.view_colours import colour_cameras

    if getattr(args, "dataset", False):
        return _export_dataset(args)
    if getattr(args, "dataset_format", "nerfstudio") != "nerfstudio":
        raise NLSError(f"--dataset-format {args.dataset_format} is the layout of --dataset, which writes the run's "
                       f"images and cameras: add --dataset (and -o a new folder)")
    if getattr(args, "points", None):
        return _export_points(args)
    check_mesh_path(args.output)  # before the model is built and the field is sampled
    ext = Path(args.output).suffix.lower()
    if args.colors and ext not in COLOR_FORMATS:
        raise NLSError(f"--colors: {ext} files keep no vertex colours; use one of {', '.join(COLOR_FORMATS)}")
    _check_texture_and_faces(args, ext)
    if args.frame == "input":
        _refuse_frame_input(Path(args.run_dir), None)  # before the model is built, when scene.json says so
    ld = open_run(args)
    frame = _input_frame(ld) if args.frame == "input" else None
    colour = "--colors" if args.colors else "--texture" if args.texture else None
    if colour and not ld.scene.splits:
        raise NLSError(f"{colour}: this run's scene has no posed images of its own (a geometry, point-cloud or "
                       f"shape-collection scene), so the field has no trained colour to bake; export without {colour}")
    closable = _extractor_closes(ld)
    if args.close:
        if closable is None:
            choice = ld.cfg.stages.get("extractor")
            raise NLSError(f"--close: the run's extractor {choice.name!r} has no `close` option (it does not "
                           f"cap surfaces with the box's faces); export without --close" if choice else
                           "--close: this run's scene has no extractor stage")
        choice = ld.cfg.stages["extractor"]
        choice.options = choice.options.model_copy(update={"close": True})
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device)
    with progress_default(False if args.quiet else None):
        mesh = extract(ctx, resolution=args.resolution, level=args.level, bbox=args.bbox)
    cut = _open_at_box(mesh)  # in the run's frame, where the box is
    hull = None
    if args.visual_hull is not None:
        from pipeline.visual_hull import cut_to_visual_hull

        if "train" not in ld.scene.splits:
            raise NLSError("--visual-hull: this run's scene has no training views to cut the mesh to")
        mesh, hull = cut_to_visual_hull(mesh, ld.scene.splits["train"], args.visual_hull)
    extracted = len(mesh.faces)
    if args.faces:
        from pipeline.texture import decimate

        mesh = decimate(mesh, args.faces)
    views = colour_cameras(ld.scene, getattr(args, "color_from", "views"))
    if args.colors:
        bake_vertex_colors(mesh, ld.system.chain, ld.device, linear=ext == ".glb", cameras=views)  # glTF: linear
    if args.texture:
        from pipeline.texture import bake_texture

        if len(mesh.faces) > LARGE_TO_UNWRAP and not args.quiet:
            print(f"note: xatlas's time to cut {len(mesh.faces)} faces into a UV atlas grows faster than the count "
                  f"(on 2 cores: 10 s for 100k faces of lego's mesh, 25 s for 200k, longer on a loaded machine); "
                  f"--faces 50000 simplifies the mesh first, and a texture keeps its colour", file=sys.stderr,
                  flush=True)
        mesh = bake_texture(mesh, ld.system.chain, ld.device, args.texture, name=Path(args.output).stem, ext=ext,
                            cameras=views)
    import numpy as np

    if frame is not None:  # run frame -> the input file's: p = (p' - t) / s, a uniform scale and a shift
        mesh.apply_transform(np.linalg.inv(np.asarray(frame["to_run"], dtype=np.float64)))
    up = args.up or ("y" if frame is not None else world_up(ld.scene.meta) if ext == ".glb" else "y")
    if up == "z":  # (x, y, z) -> (x, z, -y): a quarter turn about x takes +Z to +Y
        mesh.apply_transform(np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float))
    written = weld_for_format(mesh, ext)  # as the file holds it: the counts below are those read back
    del mesh  # (metadata copied): reading the file back holds a third mesh, at 1024^3 several GB each
    out = export_mesh(written, Path(args.output), weld=False)
    quantity, level = written.metadata.get("quantity"), written.metadata.get("level")
    which = f" ({quantity} level {level})" if quantity is not None and level is not None else ""
    watertight = read_back_watertight(out)
    texture = written.metadata.get("texture")
    print(f"wrote {out}: {len(written.vertices)} vertices, {len(written.faces)} faces"
          + (f" (simplified from {extracted})" if len(written.faces) != extracted and args.faces else "")
          + (", vertex colours" if args.colors else "")
          + (f", a {texture['size']} x {texture['size']} texture ({texture['covered']:.0%} of its texels on the "
             f"surface)" + (f" in {out.with_suffix('.png').name} with {out.with_suffix('.mtl').name}" if ext == ".obj"
                            else "") if texture else "")
          + f", watertight={watertight} as read back{which}"
          + (f"; {hull} faces off the visual hull of the {len(ld.scene.splits['train'])} training views' masks "
             f"(grown by {args.visual_hull:g} px) dropped" if hull is not None else ""))
    if frame is not None:
        turned = " and turned back" if frame.get("rotation") is not None else ""  # colmap: p' = s R (p - c)
        print(f"in the coordinates of the input file {frame.get('file')} (the run's frame scaled by "
              f"1/{frame['scale']:.6g}{turned} and centred back at {[round(c, 6) for c in frame['centre']]})")
    if up == "z":  # the coordinates are no longer the run's: say so, whichever way it was chosen
        print("turned the run's +Z up to +Y up (x, y, z) -> (x, z, -y)" + (
            " for glTF (--up y keeps the coordinates as trained)" if args.up is None else " (--up z)"))
    if not watertight and cut and not args.close:
        where = "the --bbox box" if args.bbox else "the extractor's box"
        fix = ("; --close caps it with the box's faces (a closed mesh)" if closable is not None else
               "; give a larger --bbox to mesh all of it")
        print(f"note: the mesh is open where the surface leaves {where} (marching cubes stops at its faces){fix}")
    return 0


def _export_dataset(args) -> int:
    """``nls export --dataset -o DIR``: the run's posed images, cameras, masks and depth maps as an instant-ngp /
    nerfstudio folder or IDR / NeuS folders (:mod:`pipeline.dataset_export`); given a scene file or data path
    instead of a run, the scene it loads (:func:`_scene_without_run`); exit code 0."""
    from pipeline.dataset_export import check_dataset_folder, write_dataset, write_neus_dataset

    given = [flag for key, flag in {**MESH_ONLY, "points": "--points", "bbox": "--bbox", "up": "--up"}.items()
             if _given(args, key)]
    if given:
        raise NLSError(f"--dataset writes the run's images and cameras, which {', '.join(given)} (options of a mesh or "
                       f"point cloud) do not apply to; drop {'them' if len(given) > 1 else 'it'}")
    out = check_dataset_folder(Path(args.output))
    if not (Path(args.run_dir) / "config.yaml").is_file() and Path(args.run_dir).exists():
        scene, source, hint = _scene_without_run(args)  # (a scene file or data: converted, nothing trained)
        frame = _scene_input_frame(scene) if args.frame == "input" else None
        where = " (in the input file's frame)" if frame is not None else " (in the scene's frame)"
    else:
        if args.frame == "input":
            _refuse_frame_input(Path(args.run_dir), None)
        ld = open_run(args)
        scene, hint = ld.scene, f"this run's method with nls reconstruct {ld.run.path / 'config.yaml'}"
        source = {"run": str(ld.run.path.resolve()), "step": ld.step, "scene": ld.cfg.name, "method": ld.cfg.method,
                  "frame": args.frame}
        frame = _input_frame(ld) if args.frame == "input" else None
        where = " (in the input file's frame)" if frame is not None else " (in the run's frame)"
    neus = args.dataset_format == "neus"
    write = write_neus_dataset if neus else write_dataset
    facts = write(scene, out,  # (open_run's scene: the cameras refined as the run refined them)
                  to_run=None if frame is None else frame["to_run"], progress=not args.quiet, source=source)
    (_say_neus_export if neus else _say_export)(scene, hint, out, facts, where)
    return 0


def _scene_without_run(args) -> tuple:
    """``(scene, source, hint)`` of ``nls export SCENE_OR_DATA --dataset``: the scene a scene file or data path
    (a COLMAP capture, photos, a video, a Blender or NeuS folder) loads, as ``nls reconstruct`` would load it
    (structure from motion, undistortion and fitting included, cached as for training), with nothing trained."""
    from pipeline.build import load_scene_for_command
    from pipeline.commands.run_loading import host_for
    from pipeline.config import load_scene

    cfg = load_scene(Path(args.run_dir), host_for(args), [])
    scene = load_scene_for_command(cfg, "cpu", quiet=args.quiet)
    source = {"scene": cfg.name, "from": str(Path(args.run_dir).resolve()), "frame": args.frame}
    return scene, source, "a scene file's method with nls reconstruct SCENE.yaml"


def _scene_input_frame(scene) -> dict:
    """The input frame a scene's source recorded (``meta["input_frame"]``); NLSError for ``--frame input`` when it
    has none."""
    frame = scene.meta.get("input_frame")
    if not isinstance(frame, dict) or "to_run" not in frame:
        raise NLSError(f"--frame input: this scene ({scene.meta.get('source', 'its source')}) was not made by "
                       f"normalising an input file, so there is no input frame; export without --frame input")
    return frame


def _export_extras(facts: dict, *keys: str) -> str:
    """``, with A and B`` of what a dataset export wrote beside the views (the facts of ``keys``), or ''."""
    named = {"masks": "ignore masks", "depths": "depth maps", "gt_mesh": "the ground-truth mesh",
             "points": f"{facts['points']} sparse points"}
    extras = [named[k] for k in keys if facts[k]]
    return f", with {' and '.join(extras)}" if extras else ""


def _say_export(scene, hint: str, out: Path, facts: dict, where: str) -> None:
    """What ``--dataset`` (nerfstudio) wrote, and how to train on it (``hint``: whose method with which file)."""
    counts = ", ".join(f"{n} {name}" for name, n in facts["splits"].items())
    print(f"wrote {out}: transforms.json and the images of {counts} views"
          + _export_extras(facts, "masks", "depths", "gt_mesh", "points") + where)
    print(f"train on the same data: {hint} --set scene.type=blender --set scene.path={out}, another scene file's "
          f"the same way, or another tool's, e.g. ns-train nerfacto --data {out}")


def _say_neus_export(scene, hint: str, out: Path, facts: dict, where: str) -> None:
    """What ``--dataset --dataset-format neus`` wrote, and how to train on it (the box in the folder's frame)."""
    counts = ", ".join(f"{n} {name}" for name, n in facts["splits"].items())
    held = [f"{name}/" for name in facts["splits"] if name != "train"]
    others = f"{', '.join(held)} {'hold' if len(held) > 1 else 'holds'} the others" if held else "no held-out views"
    print(f"wrote {out}: image/, mask/ and cameras_sphere.npz of {counts} views (the train views; {others})"
          + _export_extras(facts, "gt_mesh", "points") + where)
    aabb = ",".join(f"{v:.8g}" for v in facts["aabb"])
    masks = "" if any(s.alphas is not None for s in scene.splits.values()) else " --set scene.mask_use=ignore"
    truth = " --set scene.gt_mesh=gt_mesh.ply" if facts["gt_mesh"] else ""
    print(f"train on the same data: {hint} --set scene.type=neus --set scene.path={out} --set scene.orientation=none "
          f"--set 'scene.aabb=[{aabb}]'{masks}{truth} (the box in the folder's normalised frame), or a NeuS-family "
          f"code's on {out}")


def _given(args, key: str) -> bool:
    """Whether the option ``key`` was given: not its default None, nor False for a flag (0 counts as given)."""
    value = getattr(args, key, None)
    return value is not None and value is not False


#: the options of a mesh export, which a point cloud (--points) does not take
MESH_ONLY = {"resolution": "--resolution", "level": "--level", "close": "--close", "colors": "--colors",
             "texture": "--texture", "faces": "--faces", "visual_hull": "--visual-hull"}


def _export_points(args) -> int:
    """``nls export --points N``: a coloured point cloud with normals from the training views
    (:func:`pipeline.field_points.field_points`), written as .ply; exit code 0."""
    import numpy as np

    from pipeline.field_points import field_points
    from pipeline.mesh import check_point_cloud_path, export_point_cloud

    given = [flag for key, flag in MESH_ONLY.items() if _given(args, key)]
    if given:
        raise NLSError(f"--points writes a point cloud, which {', '.join(given)} (options of a mesh) do not apply to; "
                       f"drop {'them' if len(given) > 1 else 'it'}, or export a mesh without --points")
    if Path(args.output).suffix.lower() != ".ply":
        raise NLSError(f"--points: a point cloud is written as .ply, not "
                       f"{Path(args.output).suffix or 'a file without an extension'}; "
                       f"e.g. -o {Path(args.output).with_suffix('.ply').name}")
    check_point_cloud_path(args.output)  # a folder, or a place that cannot be written: said before any rendering
    if args.frame == "input":
        _refuse_frame_input(Path(args.run_dir), None)
    ld = open_run(args)
    if ld.system.renderer is None or not ld.scene.splits:
        raise NLSError("--points: this run renders no images (a geometry, point-cloud or shape-collection scene), so "
                       "there are no views to take points from; its input points are the scene's own")
    frame = _input_frame(ld) if args.frame == "input" else None
    x, rgb, normals, facts = field_points(ld, args.points, bbox=args.bbox, progress=not args.quiet)
    if len(x) == 0:
        raise NLSError(f"--points: no pixel of the {facts['views']} training views is opaque"
                       + (" inside the --bbox" if args.bbox else "") + "; nothing to write")
    if frame is not None:  # run frame -> the input file's (a similarity: normals turn with its rotation alone)
        m = np.linalg.inv(np.asarray(frame["to_run"], dtype=np.float64))
        x = x @ m[:3, :3].T + m[:3, 3]
        turn = m[:3, :3] / np.cbrt(np.linalg.det(m[:3, :3]))
        normals = normals @ turn.T
    up = args.up or "y"
    if up == "z":  # (x, y, z) -> (x, z, -y), as for meshes
        q = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)
        x, normals = x @ q.T, normals @ q.T
    out = export_point_cloud(x, Path(args.output), normals=normals, colors=rgb)
    w, h = facts["size"]
    print(f"wrote {out}: {len(x)} points with colours and normals, from {facts['surface_pixels']} surface pixels of "
          f"the {facts['views']} training views rendered at {w} x {h} (1/{facts['factor']} size)")
    if up == "z":
        print("turned the run's +Z up to +Y up (x, y, z) -> (x, z, -y) (--up z)")
    if len(x) < args.points:
        print(f"note: fewer points than the {args.points} asked for: the full-size views hold no more surface pixels"
              + (" inside the --bbox" if args.bbox else ""), file=sys.stderr)
    return 0


#: faces above which ``--texture`` says that unwrapping will take a while
LARGE_TO_UNWRAP = 100_000


def _check_texture_and_faces(args, ext: str) -> None:
    """Before the model is built: ``--texture`` goes into .glb or .obj, not with --colors, and it and ``--faces``
    have their packages (:func:`pipeline.texture.check_tool`)."""
    from pipeline.texture import check_tool

    if args.texture:
        if ext not in (".glb", ".obj"):
            raise NLSError(f"--texture: {ext} files keep no texture; write .glb (the texture embedded) or .obj "
                           f"(with .mtl and .png beside it)")
        if args.colors:
            raise NLSError("--texture and --colors both colour the mesh: give one (a texture keeps more detail on "
                           "fewer faces; vertex colours need no UV atlas)")
        check_tool("--texture")
    if args.faces:
        check_tool("--faces")


def _refuse_frame_input(run_dir: Path, meta: Optional[dict]) -> None:
    """NLSError for ``--frame input`` when the run's scene (``meta``, else its scene.json) was not made by
    normalising an input file; nothing when it was, or when scene.json cannot tell (checked again once
    the scene is loaded)."""
    from pipeline.runs import RunDir

    if meta is None:
        try:
            meta = RunDir.open(run_dir).read_json("scene.json")
        except NLSError:
            return  # open_run says what is wrong with the folder
        if not meta:
            return
    if isinstance(meta.get("input_frame"), dict) or (
            (meta.get("input") or meta.get("mesh")) and meta.get("normalised_extent") is not None):
        return
    source = meta.get("source") or "this"
    raise NLSError(f"--frame input: this run's scene ({source}) was not made from an input mesh or point file "
                   f"that nls normalised (only mesh, geometry, scan and colmap scenes are), so there is no input frame "
                   f"to map back to: its meshes are already in the scene's own coordinates; export without "
                   f"--frame input")


def _input_frame(ld: Loaded) -> dict:
    """The transform of the run's input file into its frame (``input_frame``, which mesh, geometry, scan and
    colmap scene sources record in the scene's meta and reconstruct in scene.json): the recorded one, else (a run of
    an older nls) the one the scene source gave when ``open_run`` loaded the scene again; NLSError when the
    scene has none."""
    recorded = ld.run.read_json("scene.json") or {}
    frame = recorded.get("input_frame")
    if not isinstance(frame, dict):
        frame = ld.scene.meta.get("input_frame")
    if not isinstance(frame, dict):
        _refuse_frame_input(ld.run.path, {**ld.scene.meta, **recorded})
        raise NLSError("--frame input: this run's scene records no input frame; export without --frame input")
    return frame


def _extractor_closes(ld: Loaded) -> Optional[bool]:
    """The run's extractor's ``close`` option, None when it has none (or there is no extractor)."""
    choice = ld.cfg.stages.get("extractor")
    if choice is None or "close" not in type(choice.options).model_fields:
        return None
    return bool(choice.options.close)


def _open_at_box(mesh) -> bool:
    """Whether ``mesh`` has open borders lying on the faces of the box it was extracted in (its
    ``metadata["bbox"]``): the surface left the box there, and marching cubes stopped at its faces."""
    import numpy as np
    import trimesh

    box = mesh.metadata.get("bbox")
    if box is None or len(mesh.faces) == 0:
        return False
    border = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    if len(border) == 0:
        return False
    lo, hi = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
    v = np.asarray(mesh.vertices)[np.unique(mesh.edges_sorted[border])]
    tol = 1e-6 * float((hi - lo).max())
    return bool((np.isclose(v, lo, rtol=0, atol=tol) | np.isclose(v, hi, rtol=0, atol=tol)).any())


def world_up(meta: dict) -> str:
    """'z' for a scene whose world is +Z up, else 'y': the up axis its views were rendered with (``world_up``
    of the scene, or of its ``generator`` record), else z for the Blender/instant-ngp formats (NeRF-synthetic
    scenes and colmap2nerf captures are +Z up)."""
    generator = meta.get("generator") if isinstance(meta.get("generator"), dict) else {}
    recorded = meta.get("world_up") or generator.get("world_up")
    if recorded:
        return "z" if recorded == "+z" else "y"
    return "z" if meta.get("source") in ("blender", "instant-ngp") else "y"
