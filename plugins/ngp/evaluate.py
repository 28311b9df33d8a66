"""Evaluators of the backend: image metrics on test renders, geometry metrics on the mesh."""

from __future__ import annotations

from plugins.ngp.config import (ChamferConfig, DepthConfig, DTUConfig, MeshPSNRConfig, PointFitConfig, PSNRConfig,
                                TrainViewsConfig)


class ImageMetrics:
    """Mean PSNR / SSIM of the eval split's renders against the ground-truth images, over the pixels that count
    where the views have ignore masks (a view they leave no pixel of is not scored: ``n_images_masked_out``); with
    ``object``, also over the object's pixels alone (``psnr_object``, ``ssim_object``: views without any are left
    out of those means)."""

    def __init__(self, cfg: PSNRConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        from pipeline.metrics import color_corrected, psnr, ssim
        from pipeline.types import NLSError

        pairs = ctx.renders()
        views = [(p, g, m) for (p, g), m in zip(pairs, ctx.masks()) if m is None or m.any()]
        if not views:
            raise NLSError(f"the ignore masks of the {len(pairs)} views evaluated leave no pixel to score")
        out = {"psnr": sum(psnr(p, g, m) for p, g, m in views) / len(views), "n_images": len(views)}
        if len(views) < len(pairs):
            out["n_images_masked_out"] = len(pairs) - len(views)
        if self.cfg.ssim:
            out["ssim"] = sum(ssim(p, g, mask=m) for p, g, m in views) / len(views)
        if self.cfg.color_correct != "none":
            corrected = [(color_corrected(p, g, self.cfg.color_correct, m), g, m) for p, g, m in views]
            out["psnr_cc"] = sum(psnr(p, g, m) for p, g, m in corrected) / len(corrected)
            if self.cfg.ssim:
                out["ssim_cc"] = sum(ssim(p, g, mask=m) for p, g, m in corrected) / len(corrected)
        if self.cfg.object:
            on = [(p, g, m) for (p, g), m in zip(pairs, ctx.object_masks()) if m.any()]
            if not on:
                raise NLSError(f"object: true: none of the {len(pairs)} views evaluated shows the object (alpha >= "
                               f"0.5 within the ignore masks)")
            out["psnr_object"] = sum(psnr(p, g, m) for p, g, m in on) / len(on)
            if self.cfg.ssim:
                out["ssim_object"] = sum(ssim(p, g, mask=m) for p, g, m in on) / len(on)
        return out


class GeometryMetrics:
    """Chamfer-L1/L2 (x10^3), normal consistency and F-score in the GT-normalised frame
    (:func:`pipeline.metrics.chamfer`);
    optionally the sampling floor and the floor-free point-to-surface Chamfer (``*_surface``)."""

    def __init__(self, cfg: ChamferConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        from pipeline.metrics import chamfer, chamfer_floor, chamfer_to_surface
        from pipeline.scenes.mesh_render import load_mesh

        gt = load_mesh(ctx.scene.gt_mesh)
        e = ctx.cfg.eval
        mesh = ctx.mesh()
        res = chamfer(mesh, gt, n_samples=e.chamfer_samples, fscore_taus=(e.fscore_tau,))
        if isinstance(mesh.metadata.get("level"), (int, float)):
            res["mesh_level"] = float(mesh.metadata["level"])  # the iso-level meshed (calibrated or fixed)
        if self.cfg.floor:
            fl = chamfer_floor(gt, n_samples=e.chamfer_samples)
            res["chamfer_l1_floor"] = fl["chamfer_l1"]
        if self.cfg.surface:
            exact = chamfer_to_surface(mesh, gt, n_samples=e.chamfer_samples)
            res.update({f"{k}_surface": exact[k] for k in ("chamfer_l1", "chamfer_l2")})
        return res


class DTUMetrics:
    """DTU's point-cloud evaluation (:mod:`pipeline.dtu_eval`) of the run's mesh, moved from the run's frame into
    the scan's world frame by the inverse of the scene's ``input_frame.to_run`` (the identity for a scene with
    none), after an optional visual-hull cut in the run's frame."""

    def __init__(self, cfg: DTUConfig):
        self.cfg = cfg

    def files(self, ctx) -> dict:
        """{"points" | "obs_mask" | "plane": Path}: the options given, the rest from ``root`` and ``scan``."""
        import os
        from pathlib import Path

        from pipeline.dtu_eval import reference_files, scan_number
        from pipeline.types import NLSError

        def path(s: str) -> Path:
            return Path(os.path.expandvars(s)).expanduser()

        given = {k: getattr(self.cfg, k) for k in ("points", "obs_mask", "plane")}
        out = {k: path(v) for k, v in given.items() if v}
        if len(out) == 3:
            return out
        root = self.cfg.root or os.environ.get("NLS_DTU")
        if not root:
            raise NLSError(f"dtu: no {', '.join(k for k in given if k not in out)} given, and neither the "
                           f"evaluator's root nor $NLS_DTU names DTU's evaluation folder (the one holding Points/stl/ "
                           f"and ObsMask/)")
        scan = self.cfg.scan
        folder = ctx.scene.meta.get("root") or getattr(ctx.cfg.stages["scene"].options, "path", None) or ""
        if scan is None:
            scan = scan_number(Path(str(folder)).name)
        if scan is None:
            raise NLSError(f"dtu: the scene folder's name {Path(str(folder)).name!r} names no scan (scan24, "
                           f"dtu_scan24); give the evaluator's scan")
        return {**reference_files(path(root), scan), **out}

    def __call__(self, ctx) -> dict:
        import numpy as np

        from pipeline.dtu_eval import evaluate_mesh, load_reference
        from pipeline.external_mesh import to_run_frame

        ref = load_reference(**self.files(ctx))
        mesh = ctx.mesh()
        res = {}
        if self.cfg.visual_hull is not None:
            from pipeline.types import NLSError
            from pipeline.visual_hull import cut_to_visual_hull

            if "train" not in ctx.scene.splits:
                raise NLSError("dtu: visual_hull needs the scene's training views")
            mesh, res["dtu_hull_dropped_faces"] = cut_to_visual_hull(mesh, ctx.scene.splits["train"],
                                                                     self.cfg.visual_hull)
        to_run = to_run_frame(ctx.scene)
        vertices = np.asarray(mesh.vertices, np.float64)
        if to_run is not None:
            back = np.linalg.inv(to_run)
            vertices = vertices @ back[:3, :3].T + back[:3, 3]
        res.update(evaluate_mesh(vertices, np.asarray(mesh.faces), ref, density=self.cfg.density,
                                 max_dist=self.cfg.max_dist, patch=self.cfg.patch, seed=self.cfg.seed,
                                 progress=_say("dtu") if ctx.progress else None))
        return res


def _say(who: str):
    """A progress callback printing ``evaluator WHO: ...`` lines to stderr."""
    import sys

    return lambda line: print(f"evaluator {who}: {line}", file=sys.stderr, flush=True)


class PointFitMetrics:
    """The mesh against the scene's input points (``ctx.scene.points``, (P, 3), in the run's frame): a point
    cloud's, which has no ground-truth mesh, or a COLMAP capture's sparse points. Skipped without points.

    ``fit_*``: :func:`pipeline.metrics.chamfer` with the points as the reference, in the frame where their
    bounding box is centred with largest side 1. ``fit_accuracy_l1`` (mesh samples to the nearest input point)
    grows with surface the points do not support, such as sheets closing holes in a scan;
    ``fit_completeness_l1`` (input points to the nearest mesh sample) with points the mesh misses. Its
    floor is the mean spacing of the samples, not 0. ``fit_residual_l1`` / ``fit_residual_p95``: the mean and
    95th percentile of each input point's exact distance to the mesh surface (×10³, same frame), which has no
    sampling floor."""

    def __init__(self, cfg: PointFitConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        import numpy as np

        from pipeline.metrics import chamfer, point_to_surface_distances
        from pipeline.types import NLSError

        if ctx.scene.points is None or len(ctx.scene.points) == 0:
            raise NLSError("the scene has no input points (none inside its box: a COLMAP model's sparse points, or an "
                           "IDR / NeuS folder's point file)")
        points = np.asarray(ctx.scene.points, np.float64)
        e = ctx.cfg.eval
        mesh = ctx.mesh()
        fit = chamfer(mesh, points, n_samples=e.chamfer_samples, fscore_taus=(e.fscore_tau,))
        res = {f"fit_{k}": v for k, v in fit.items() if k not in ("n_samples", "n_rec", "n_gt", "scale", "frame")}
        res.update(n_points=int(len(points)), frame=f"{fit['frame']} (of the input points)")
        if self.cfg.residual:
            if len(points) > self.cfg.max_points:
                points = points[np.random.default_rng(0).choice(len(points), self.cfg.max_points, replace=False)]
            d = point_to_surface_distances(points, mesh) * fit["scale"]
            res.update(fit_residual_l1=float(d.mean() * 1e3), fit_residual_p95=float(np.percentile(d, 95) * 1e3))
        return res


class DepthMetrics:
    """The eval split's rendered depth (the same renders the ``psnr`` evaluator scores) against the ground-truth
    mesh's depth (:func:`pipeline.mesh_views.mesh_depth`) on the pixels the mesh covers: ``depth_l1`` and
    ``depth_abs_rel`` for the expected depth, ``depth_median_*`` for the median depth when the renderer gives it;
    the first ``save_images`` views as pictures in ``renders/depth_<split>/``. With ``eval.supersample`` above 1 the rendered depth is the mean over each pixel's sub-rays and the ground
    truth is taken at the pixel's centre."""

    #: what the metrics' names start with, and what the ground truth is (for the error when it covers nothing)
    prefix, truth_of = "", "the ground-truth mesh"

    def __init__(self, cfg: DepthConfig):
        self.cfg = cfg

    def truths(self, ctx, split):
        """``truth(i) -> (H, W)`` float64 distance along view ``i``'s pixel-centre rays, NaN where none."""
        from pipeline.mesh_views import mesh_depth
        from pipeline.scenes.mesh_render import load_mesh

        gt_mesh = load_mesh(ctx.scene.gt_mesh)
        return lambda i: mesh_depth(gt_mesh, split.cameras, i)

    def __call__(self, ctx) -> dict:
        import numpy as np

        from pipeline.types import NLSError

        split_name = ctx.split or ctx.cfg.eval.split
        split = ctx.scene.splits[split_name]
        truth_at = self.truths(ctx, split)
        errors: dict[str, list] = {}
        truths = []
        for k, (i, arrays) in enumerate(ctx.depths()):
            truth = truth_at(i)
            covered = np.isfinite(truth)
            truths.append(truth[covered])
            for key in ("depth", "depth_median"):
                if key in arrays:
                    errors.setdefault(key, []).append(np.abs(arrays[key].astype(np.float64)[covered] - truth[covered]))
            if k < self.cfg.save_images and ctx.renders_root is not None:
                name = split.names[i] if i < len(split.names) else f"{i:03d}"
                self._save(ctx.renders_root / f"{self.prefix}depth_{split_name}" / f"{name}.png",
                           arrays.get("depth_median", arrays["depth"]), truth)
        truth = np.concatenate(truths) if truths else np.zeros(0)
        if truth.size == 0:
            raise NLSError(f"{self.truth_of} covers no pixel of the evaluated views")
        out = {f"{self.prefix}depth_pixels": int(truth.size)}
        for key, parts in errors.items():
            err = np.concatenate(parts)
            out[f"{self.prefix}{key}_l1"] = float(err.mean())
            out[f"{self.prefix}{key}_abs_rel"] = float((err / truth).mean())
        return out

    @staticmethod
    def _save(path, depth, truth) -> None:
        """Write rendered depth | ground-truth depth (grey, near light, over the ground truth's range; black where
        the mesh is missed) | |error| (viridis, 0 to 5 % of the median ground-truth depth) as one image."""
        import numpy as np
        from matplotlib import colormaps

        from pipeline.evaluate import to_uint8
        from pipeline.runs import atomic_write_image

        covered = np.isfinite(truth)
        if not covered.any():
            return
        lo, hi = float(np.nanmin(truth)), float(np.nanmax(truth))

        def grey(d):
            g = np.where(covered, 1 - (np.asarray(d, np.float64) - lo) / max(hi - lo, 1e-12), 0.0)
            return np.repeat(np.clip(g, 0, 1)[..., None], 3, -1)

        scale = 0.05 * float(np.nanmedian(truth))
        err = np.where(covered, np.abs(depth - np.nan_to_num(truth)) / scale, 0.0)
        error = np.where(covered[..., None], colormaps["viridis"](np.clip(err, 0, 1))[..., :3], 0.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_image(path, to_uint8(np.concatenate([grey(depth), grey(truth), error], 1)))


class SensorDepthMetrics(DepthMetrics):
    """:class:`DepthMetrics` against the eval split's own depth maps (``PosedImages.depths``: a depth sensor's,
    nerfstudio's ``depth_file_path``) instead of a mesh: each pixel's z-depth turned into the distance along its
    centre ray, on the pixels that have one; the metrics are named ``sensor_depth_*``, the pictures go to
    ``renders/sensor_depth_<split>/``."""

    prefix, truth_of = "sensor_", "the eval split's depth maps"

    def truths(self, ctx, split):
        """``truth(i)``: view ``i``'s depth map as distances along its pixel-centre rays
        (:func:`pipeline.train.ray_distance`), NaN where it has none; NLSError when the split has no depth maps."""
        import numpy as np
        import torch

        from pipeline.rays import pixel_rays
        from pipeline.train import ray_distance
        from pipeline.types import NLSError

        if split.depths is None:
            raise NLSError("the sensor_depth evaluator needs depth maps of the eval split's views (a transforms.json's "
                           "depth_file_path), and this scene has none")
        cams = split.cameras
        v, u = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
        u, v = u.reshape(-1).to(cams.c2w.dtype), v.reshape(-1).to(cams.c2w.dtype)

        def truth(i: int):
            index = torch.full((u.numel(),), i, dtype=torch.long)
            _, d = pixel_rays(cams, index, u, v)
            t = ray_distance(split.depths[i].reshape(-1).to(d), d, cams.c2w[index])[:, 0]
            t = t.reshape(cams.height, cams.width).double().numpy()
            return np.where(t > 0, t, np.nan)

        return truth


class MeshRenderMetrics:
    """The run's mesh coloured as ``nls export`` colours it (:func:`pipeline.texture.bake_texture`, or
    :func:`pipeline.mesh.bake_vertex_colors`; simplified first with ``faces``), drawn unlit from the eval split's
    cameras (:func:`pipeline.mesh_views.mesh_image`, ``supersample`` x ``supersample`` rays a pixel) and scored
    against its images: ``mesh_psnr`` and
    ``mesh_ssim``, over the views ``eval.every`` and ``eval.max_images`` choose, as ``psnr`` scores the field."""

    def __init__(self, cfg: MeshPSNRConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        import numpy as np

        from pipeline.evaluate import eval_indices, missing_split_message, to_uint8
        from pipeline.mesh import bake_vertex_colors
        from pipeline.mesh_views import mesh_image
        from pipeline.metrics import psnr, ssim
        from pipeline.progress import StepProgress
        from pipeline.runs import atomic_write_image
        from pipeline.texture import bake_texture, check_tool, decimate
        from pipeline.types import NLSError
        from pipeline.view_colours import colour_cameras

        split_name = ctx.split or ctx.cfg.eval.split
        if split_name not in ctx.scene.splits:
            raise NLSError(missing_split_message(ctx.scene, split_name, "--split" if ctx.split else "eval.split"))
        cfg = self.cfg
        if cfg.colors == "texture":
            check_tool("--texture")
        if cfg.faces:
            check_tool("--faces")
        mesh = ctx.mesh().copy()
        if cfg.faces:
            mesh = decimate(mesh, cfg.faces)
        cameras = colour_cameras(ctx.scene, cfg.color_from)
        if cfg.colors == "texture":
            mesh = bake_texture(mesh, ctx.system.chain, ctx.device, cfg.texture_size, name="mesh_psnr",
                                cameras=cameras)
        else:
            bake_vertex_colors(mesh, ctx.system.chain, ctx.device, cameras=cameras)
        split = ctx.scene.splits[split_name]
        e = ctx.cfg.eval
        indices = eval_indices(len(split), e.every, e.max_images)
        supersample = cfg.supersample
        out_dir = ctx.renders_root / f"mesh_{split_name}" if ctx.renders_root is not None and cfg.save_images else None
        scores, similar = [], []
        with StepProgress(len(indices), 0, f"drawing the mesh from {split_name}", enabled=ctx.progress) as bar:
            for k, i in enumerate(indices):
                pred = mesh_image(mesh, split.cameras, i, ctx.scene.background, supersample)
                gt = split.images[i].cpu().numpy().astype(np.float64)
                keep = split.valid_of(i)
                if keep is None or keep.any():  # (a view its ignore mask leaves no pixel of is not scored)
                    scores.append(psnr(pred, gt, keep))
                    if cfg.ssim:
                        similar.append(ssim(pred, gt, mask=keep))
                if out_dir is not None and k < cfg.save_images:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    name = split.names[i] if i < len(split.names) else f"{i:03d}"
                    atomic_write_image(out_dir / f"{name}.png", np.concatenate([to_uint8(pred), to_uint8(gt)], 1))
                bar.advance(k + 1)
        if not scores:
            raise NLSError(f"the ignore masks leave no pixel of the {len(indices)} {split_name} views to score")
        out = {"mesh_psnr": float(np.mean(scores)), "mesh_faces": int(len(mesh.faces)),
               "mesh_texture_size": cfg.texture_size if cfg.colors == "texture" else 0}
        if cfg.ssim:
            out["mesh_ssim"] = float(np.mean(similar))
        return out


class TrainViewFit:
    """Each training view's PSNR, rendered at 1/``downscale`` of its size by the run's renderer (a camera with
    its intrinsics scaled alike, whose pixel centres are those of the image's ``downscale`` x ``downscale``
    blocks) against the image averaged over those blocks; in a run that learned each image's exposure
    (``train.exposure``), through that image's transform. ``train_view_psnr_median`` / ``_min``, the worst view
    by name, and ``train_views_below``: the views ``below_db`` or more under the median, which are warned about.
    The blocks' averages are sharper than one ray through each block's centre, so every view scores a little
    low alike; only the spread between views is read."""

    def __init__(self, cfg: TrainViewsConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        import numpy as np
        import torch

        from pipeline.evaluate import as_shot
        from pipeline.metrics import psnr
        from pipeline.notices import warn
        from pipeline.progress import StepProgress
        from pipeline.scenes.blender import area_downscale
        from pipeline.types import NLSError

        split = ctx.scene.splits.get("train")
        if split is None or len(split) == 0:
            raise NLSError("the scene has no training views")
        d = self.cfg.downscale
        cams = split.cameras.to(ctx.device)
        h, w = cams.height // d, cams.width // d
        if h == 0 or w == 0:
            raise NLSError(f"downscale {d} leaves no pixel of the {cams.width}x{cams.height} training views")
        small = cams.downscaled(d)
        names = [split.names[i] if i < len(split.names) else f"{i:03d}" for i in range(len(split))]
        scores = []
        with StepProgress(len(split), 0, "fitting the training views", enabled=ctx.progress) as bar, \
                torch.no_grad():
            for i in range(len(split)):
                out = ctx.system.renderer.render_image(small, i, ctx.system.chain)
                gt = area_downscale(split.images[i].cpu().numpy(), d)
                keep = split.valid_of(i, d)
                scores.append(psnr(as_shot(ctx.system, "train", out, i).clamp(0, 1).cpu().numpy(), gt, keep)
                              if keep is None or keep.any() else np.nan)  # (nothing of it counts: unscored)
                bar.advance(i + 1)
        scored = ~np.isnan(np.asarray(scores))
        names, scores = [n for n, s in zip(names, scored) if s], np.asarray(scores)[scored]
        if not len(scores):
            raise NLSError(f"the ignore masks leave no pixel of the {len(split)} training views at 1/{d} size")
        median = float(np.median(scores))
        below = [(names[i], float(scores[i])) for i in np.argsort(scores) if scores[i] <= median - self.cfg.below_db]
        if below:
            listed = ", ".join(f"{n} ({s:.1f} dB)" for n, s in below[:8]) + (" ..." if len(below) > 8 else "")
            warn(f"the field explains {len(below)} of the {len(split)} training views far worse than the others "
                 f"(at least {self.cfg.below_db:g} dB under their median of {median:.1f} dB): {listed}. Structure "
                 f"from motion may have misplaced them, or they differ from the rest (something moved, another "
                 f"exposure, blur); look at them, and scene.exclude: [names] leaves them out")
        worst = int(np.argmin(scores))
        return {"train_view_psnr_median": median, "train_view_psnr_min": float(scores[worst]),
                "train_view_worst": names[worst], "train_views_below": [n for n, _ in below],
                "train_views": len(split)}


def build_sensor_depth_metrics(cfg, ctx):
    """Build the depth-maps evaluator from its ``evaluators:`` entry (``DepthConfig``)."""
    return SensorDepthMetrics(cfg)


def build_image_metrics(cfg, ctx):
    """Build the PSNR / SSIM evaluator from its ``evaluators:`` entry (``PSNRConfig``)."""
    return ImageMetrics(cfg)


def build_geometry_metrics(cfg, ctx):
    """Build the mesh-vs-GT evaluator from its ``evaluators:`` entry (``ChamferConfig``)."""
    return GeometryMetrics(cfg)


def build_dtu_metrics(cfg, ctx):
    """Build DTU's point-cloud evaluator from its ``evaluators:`` entry (``DTUConfig``)."""
    return DTUMetrics(cfg)


def build_point_fit(cfg, ctx):
    """Build the mesh-vs-input-points evaluator from its ``evaluators:`` entry (``PointFitConfig``)."""
    return PointFitMetrics(cfg)


def build_train_views(cfg, ctx):
    """Build the per-training-view fit evaluator from its ``evaluators:`` entry (``TrainViewsConfig``)."""
    return TrainViewFit(cfg)


def build_mesh_psnr(cfg, ctx):
    """Build the exported-mesh evaluator from its ``evaluators:`` entry (``MeshPSNRConfig``)."""
    return MeshRenderMetrics(cfg)


def build_depth_metrics(cfg, ctx):
    """Build the depth-vs-ground-truth evaluator from its ``evaluators:`` entry (``DepthConfig``)."""
    return DepthMetrics(cfg)
