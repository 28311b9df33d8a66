"""``nls infer RUN_DIR IMAGE [IMAGE...] -o mesh.ply``: reconstruct a mesh from one or more images.

With several images the embeddings are averaged before decoding (Littwin & Wolf 2019, Sec. 5.2).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.types import DataError, NLSError


def load_images(paths: list[str], size: int):
    """RGBA/RGB/grey files -> (V, 3, size, size) float in [0,1], composited on white."""
    import imageio.v3 as iio
    import numpy as np
    import torch

    from plugins.shapes.collection import prepare_images
    from plugins.shapes.r2n2 import to_rgba8

    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise DataError(f"image {path} is a folder; give image files (PNG/JPG), e.g. {path}/00.png")
        if not path.is_file():
            raise DataError(f"image {path} does not exist")
        try:
            a = np.asarray(iio.imread(path))
        except Exception as exc:  # imageio raises many types, some with install advice that does not apply
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"image {path} cannot be read as an image (PNG/JPG): {first}") from None
        out.append(prepare_images(to_rgba8(a, f"image {path}")[None], size)[0])
    return torch.from_numpy(np.stack(out)).float() / 255.0


def cmd_infer(args) -> int:
    """Run ``nls infer``: set the mean embedding of ``args.images`` on the run's field and write the mesh
    (the run's extractor when it has one, else :func:`shape_mesh`) to ``args.output``. Returns 0."""
    import torch

    from pipeline.commands.run_loading import open_run
    from pipeline.evaluate import EvalContext, extract
    from pipeline.mesh import export_mesh
    from plugins.shapes.conditional import ConditionalField, conditional_field
    from plugins.shapes.evaluate import shape_mesh

    ld = open_run(args)
    if not isinstance(ld.system.chain.field, ConditionalField):  # name the run's field stage, not a class
        raise NLSError(f"nls infer needs a run of an image-conditioned shape field (hypernet, deep_level_sets, "
                       f"voxel_decoder, cond_mlp); {args.run_dir} trained field {ld.cfg.choice('field').name!r}")
    field = conditional_field(ld.system)
    ld.system.eval()
    size = field.image_size or 64
    imgs = load_images(args.images, size).to(ld.device)
    with torch.no_grad():
        e = field.encode(imgs).mean(0)
    field.set_embedding(e)
    if ld.cfg.stages.get("extractor"):
        mesh = extract(EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device), resolution=args.resolution,
                       level=args.level)
    else:
        if args.level is not None:
            raise NLSError("--level needs an extractor stage in the run's scene; without one the field's own "
                           "surface level is used")
        mesh = shape_mesh(field, e[None], args.resolution or 128)
    out = export_mesh(mesh, Path(args.output))
    print(f"wrote {out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces from {len(args.images)} image(s) "
          f"(embeddings averaged)")
    return 0


def add_infer_command(subparsers) -> None:
    """Add the ``infer`` subcommand to the CLI's ``subparsers``."""
    from pipeline.cli import finite_float, int_at_least

    c = subparsers.add_parser("infer", help="reconstruct a mesh from images with a trained shape decoder",
                              description="Encode IMAGE(s) with the run's image encoder, average the embeddings, "
                              "decode the shape and write a mesh (format from the extension).")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of a shape-decoder scene")
    c.add_argument("images", metavar="IMAGE", nargs="+", help="one or more views of one object (PNG/JPG)")
    c.add_argument("-o", "--output", required=True, metavar="MESH", help="output mesh, e.g. mesh.ply")
    c.add_argument("--resolution", type=int_at_least(16, 1024), metavar="N", help="marching-cubes grid samples "
                   "per side, 16..1024 (default: the extractor's, else 128)")
    c.add_argument("--level", type=finite_float, metavar="L", help="iso-level (default: the extractor's)")
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the run's train.device "
                   "(auto: cuda when available, else cpu)")
    c.add_argument("--plugins-dir", action="append", metavar="DIR",
                   help="load every .py file in DIR as a plugin (repeatable), as the run was made with")
    c.set_defaults(func=cmd_infer)
