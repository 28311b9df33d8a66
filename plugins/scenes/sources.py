"""Scene sources: procedural analytic shapes, mesh files, Blender-format folders and COLMAP captures.

Procedural and mesh scenes are rendered once into a Blender-format folder under the
cache (``$NLS_CACHE``, default ``~/.cache/nls``), keyed by a hash of their options, then
loaded through the same Blender loader as real data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pipeline.notices import warn
from pipeline.runs import process_umask, sweep_stale_temps
from pipeline.types import ConfigError, SceneData
from plugins.scenes.config import (BlenderConfig, ColmapConfig, MeshSceneConfig, NeusConfig, PhotosConfig,
                                   ProceduralConfig, VideoConfig)
from plugins.scenes.input_ground_truth import with_input_gt_mesh

if TYPE_CHECKING:
    import numpy as np

BG = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
#: bumped when rendering changes so stale caches are not reused
RENDER_VERSION = 1


def cache_root() -> Path:
    """The cache folder: ``$NLS_CACHE`` (empty: unset), default ``~/.cache/nls``, made absolute so a run's
    records point at it from any folder; DataError when neither gives a usable place."""
    from pipeline.types import DataError

    given = os.environ.get("NLS_CACHE") or None
    try:
        root = Path(given).expanduser() if given else Path.home() / ".cache" / "nls"
    except RuntimeError:  # no home directory to expand
        raise DataError("the scene cache needs a folder: this user has no home directory, so set NLS_CACHE "
                        "to a writable folder") from None
    long = [part for part in root.parts if len(part.encode()) > 255]
    if long:
        raise DataError(f"NLS_CACHE={given}: a part of the path is longer than 255 bytes ({long[0][:40]}...); "
                        f"give a shorter path")
    return root.absolute()


def make_cache_dir(folder: Path) -> None:
    """Create ``folder`` under the cache; an OS error (NLS_CACHE names a file, a read-only place) is raised
    as DataError naming the cache and the variable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from pipeline.runs import mkdir_failure
        from pipeline.types import DataError

        raise DataError(f"cannot use the scene cache {cache_root()} (NLS_CACHE): cannot create {folder}: "
                        f"{mkdir_failure(exc, folder)}; point NLS_CACHE at a writable folder") from None


#: in every cached scene: {relative path: [bytes, sha256]} of its files, checked when the scene is reused
MANIFEST = ".manifest.json"


def _file_digests(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of the files under ``folder`` (the manifest itself left out)."""
    from pipeline.runs import file_sha256

    return {p.relative_to(folder).as_posix(): [p.stat().st_size, file_sha256(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def cache_damage(folder: Path) -> Optional[str]:
    """What is wrong with cached scene ``folder`` against its manifest ('train/r_3.png changed', 'gt_mesh.ply
    is missing'), or None when every file is as written; a folder cached before manifests is taken as it is."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
        assert isinstance(recorded, dict)
    except (OSError, ValueError, AssertionError):
        return f"its {MANIFEST} cannot be read"
    from pipeline.runs import file_sha256

    for rel, (size, digest) in recorded.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != size or file_sha256(p) != digest:
            return f"{rel} changed since it was written"
    return None


def discard_cache_entry(folder: Path) -> None:
    """Move the damaged cache entry ``folder`` aside in one rename (no reader sees it half deleted), then
    delete it; DataError when it cannot be moved."""
    import time

    from pipeline.types import DataError

    trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}-{time.time_ns()}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as exc:
        raise DataError(f"the cached scene {folder} is damaged and cannot be moved aside ({exc.strerror or exc}); "
                        f"delete it to have it made again") from None
    shutil.rmtree(trash, ignore_errors=True)


def cache_entry(kind: str, options: dict) -> Path:
    """The folder ``cache/scenes/<kind>-<hash of options>`` that :func:`cached_render` makes (or reuses)."""
    key = hashlib.sha256(json.dumps([RENDER_VERSION, kind, options], sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "scenes" / f"{kind}-{key}"


def cached_render(kind: str, options: dict, make) -> Path:
    """Render into ``cache/scenes/<kind>-<hash>`` once; atomic by rename of a temp folder.

    ``make(folder)`` writes the scene into a temporary folder; other plugins (e.g. ``shapes``) use
    this too, so every rendered scene shares one cache and one versioning rule. A manifest of the files'
    sizes and sha256 is written with it; a reused folder whose files no longer match (deleted, truncated,
    overwritten) is made again, with a warning, instead of being trained on."""
    final = cache_entry(kind, options)
    if (final / "meta.json").exists():
        damage = cache_damage(final)
        if damage is None:
            return final
        warn(f"the cached scene {final} is damaged ({damage}); making it again")
        discard_cache_entry(final)
    elif final.is_dir():  # entries land whole, by rename, with their meta.json: this one lost it since
        warn(f"the cached scene {final} is damaged (meta.json is missing); making it again")
        discard_cache_entry(final)
    make_cache_dir(final.parent)
    sweep_stale_temps(final.parent, f".{final.name}.*")  # left by killed processes (a younger one may be at work)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        make(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_file_digests(tmp)))
        os.chmod(tmp, 0o777 & ~process_umask())  # as mkdir would; mkdtemp's 0700 shuts out other users
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


#: a mesh file with more faces than this is large: its first build says what it does on stderr and shows a
#: bar over its views (1.3M faces: 9 s on 2 cores). The procedural demo (~200-270k faces) never says anything.
LARGE_MESH_FACES = 200_000
#: a point file with more points than this is large: its loading says what it does on stderr
LARGE_POINT_COUNT = 500_000
#: a file this big is large before it is read, while its faces or points are not counted yet (reading
#: a 53 MB OBJ of 1.3M faces takes 4 s)
LARGE_FILE_BYTES = 16 * 2 ** 20


class InputNotice:
    """One stderr line, said at most once, of what loading a large input does: ``{head} ({size}): {steps}``.
    Large: a file of :data:`LARGE_FILE_BYTES` or more (said before it is read), or more points or faces
    than a limit (said once they are counted)."""

    def __init__(self, head: str, steps: str):
        self.head, self.steps, self.said = head, steps, False

    def by_file(self, path: Path) -> bool:
        """Say it, with the size of file ``path``, when the file is large; whether it is said (now or before)."""
        size = path.stat().st_size
        return self._say_if(size >= LARGE_FILE_BYTES, f"{size / 2 ** 20:,.0f} MB")

    def by_count(self, n: int, noun: str, limit: int) -> bool:
        """Say it, with ``n`` ``noun``, when ``n`` exceeds ``limit``; whether it is said (now or before)."""
        return self._say_if(n > limit, f"{n:,} {noun}")

    def _say_if(self, large: bool, size: str) -> bool:
        if large and not self.said:
            print(f"{self.head} ({size}): {self.steps}", file=sys.stderr, flush=True)
            self.said = True
        return self.said


def _scene_name(ctx, path: Path) -> str:
    """The scene's name (its config's ``name``), else the input file's stem (no config, as in tests)."""
    return getattr(getattr(ctx, "cfg", None), "name", None) or path.stem


def _progress_wanted() -> bool:
    """False inside ``pipeline.mesh.progress_default(False)`` (``-q``), the switch its field sampling obeys."""
    from pipeline.mesh import progress_setting

    return progress_setting() is not False


def _render_views(mesh, out: Path, cfg, progress: bool = False) -> None:
    """Render ``cfg``'s train and test views of ``mesh`` into ``out``; ``progress``: a bar over the views."""
    from pipeline.progress import StepProgress
    from pipeline.scenes.mesh_render import render_mesh_views

    total = cfg.n_train + cfg.n_test
    with StepProgress(total, 0, f"rendering {total} views of {len(mesh.faces):,} faces", enabled=progress) as bar:
        render_mesh_views(mesh, out, n_train=cfg.n_train, n_test=cfg.n_test, width=cfg.image_size,
                          height=cfg.image_size, camera_angle_x=cfg.camera_angle_x, radius=cfg.radius,
                          seed=cfg.seed, supersample=cfg.supersample, on_view=lambda done: bar.advance(done, "views"))


#: options of the rendered scenes applied when the cached views are loaded, so not part of the cache key
AFTER_RENDERING = {"background", "exposure_jitter", "pose_noise_deg", "pose_noise_shift"}


def _load(folder: Path, cfg, aabb=None) -> SceneData:
    """The rendered views in ``folder`` on ``cfg.background``, with ``cfg.exposure_jitter`` applied to the
    training images (their gains in ``scene.meta["exposure_gains"]``), ``cfg.pose_noise_deg`` and
    ``pose_noise_shift`` to their cameras (``scene.meta["true_poses"]`` and ``["noisy_poses"]``) and ``aabb`` as the
    box."""
    import torch

    from pipeline.scenes.blender import load_blender

    scene = load_blender(folder, splits=("train", "test"), background=BG[cfg.background])
    scene.gt_mesh = folder / "gt_mesh.ply"
    if aabb is not None:
        scene.aabb = torch.tensor(aabb, dtype=torch.float32)
    if cfg.exposure_jitter > 0:
        from pipeline.exposure import jitter_exposure

        train = scene.splits["train"]
        train.images, gains = jitter_exposure(train.images, train.alphas, BG[cfg.background], cfg.exposure_jitter,
                                              cfg.seed)
        scene.meta["exposure_gains"] = [[round(float(v), 5) for v in g] for g in gains]
    simulate_pose_error(scene, cfg, cfg.seed)
    warn_if_cut_off(scene)
    return scene


def simulate_pose_error(scene: SceneData, cfg, seed: int) -> None:
    """Apply ``cfg.pose_noise_deg`` and ``cfg.pose_noise_shift`` (:class:`plugins.scenes.config._PoseNoise`) to
    ``scene``'s training cameras, in place, recording both pose sets in ``scene.meta["true_poses"]`` and
    ``["noisy_poses"]`` (c2w, 4x4 lists); and ``cfg.focal_noise`` to every split's cameras (a list: camera ``i``
    of a split takes error ``i % len``), recording the
    training cameras' true ``fx`` in ``scene.meta["true_fx"]`` and the factor in ``["focal_noise"]``. Nothing when
    all are 0."""
    from dataclasses import replace

    if any(e != 0 for e in (cfg.focal_noise if isinstance(cfg.focal_noise, list) else [cfg.focal_noise])):
        from pipeline.focal_refinement import simulated_focal_factors

        scene.meta.update(true_fx=[round(float(f), 5) for f in scene.splits["train"].cameras.fx],
                          focal_noise=cfg.focal_noise)
        for split in scene.splits.values():
            cams = split.cameras
            k = simulated_focal_factors(cfg.focal_noise, len(cams)).to(cams.fx.dtype)
            split.cameras = replace(cams, fx=cams.fx * k, fy=cams.fy * k)
    if cfg.pose_noise_deg <= 0 and cfg.pose_noise_shift <= 0:
        return
    from pipeline.pose_refinement import perturb_poses

    train = scene.splits["train"]
    true_c2w = train.cameras.c2w
    train.cameras, _, _ = perturb_poses(train.cameras, cfg.pose_noise_deg, cfg.pose_noise_shift, seed)
    for key, c2w in (("true_poses", true_c2w), ("noisy_poses", train.cameras.c2w)):
        scene.meta[key] = [[[round(float(v), 7) for v in r] for r in m] for m in c2w]


def views_cut_off(alphas) -> int:
    """How many views of ``alphas`` ``(N, H, W, 1)`` show the object on their outermost pixel ring
    (coverage above 1/2): it runs out of the image there, so part of it is never seen."""
    a = alphas[..., 0] > 0.5
    border = a[:, 0, :].any(-1) | a[:, -1, :].any(-1) | a[:, :, 0].any(-1) | a[:, :, -1].any(-1)
    return int(border.sum())


def warn_if_cut_off(scene: SceneData) -> None:
    """A warning when the rendered object runs out of training views (e.g. ``scene.extent`` raised
    without ``scene.radius``): what lies outside the images is never trained."""
    train = scene.splits.get("train")
    if train is None or train.alphas is None:
        return
    n = views_cut_off(train.alphas)
    if n:
        warn(f"the object runs out of the image in {n} of {len(train)} training views, so parts of it "
             f"are never seen; move the cameras back (scene.radius) or shrink the object (scene.extent)")


def procedural_mesh(shape: str, resolution: int):
    """Ground-truth mesh of an analytic shape: marching cubes of its SDF at level 0."""
    from pipeline.mesh import extract_mesh
    from plugins.scenes.shapes import SHAPES

    return extract_mesh(SHAPES[shape], [-0.6] * 3 + [0.6] * 3, resolution, 0.0, inside="below")


def build_procedural(cfg: ProceduralConfig, ctx):
    """Build the ``procedural`` scene source from its ``scene:`` block (``ProceduralConfig``): returns a
    loader that renders the shape's views once (cached) and returns the SceneData."""
    def load() -> SceneData:
        folder = cached_render("procedural", cfg.model_dump(exclude=AFTER_RENDERING),
                                lambda out: _render_views(procedural_mesh(cfg.shape, cfg.gt_resolution), out, cfg))
        scene = _load(folder, cfg, [-0.6] * 3 + [0.6] * 3)
        scene.meta.update({"source": "procedural", "shape": cfg.shape})
        return scene

    return load


def build_mesh_scene(cfg: MeshSceneConfig, ctx):
    """Build the ``mesh`` scene source from its ``scene:`` block (``MeshSceneConfig``): returns a loader
    that renders the normalised mesh's views once (cached) and returns the SceneData."""
    def load() -> SceneData:
        from pipeline.scenes.mesh_render import load_mesh, normalize_mesh

        from pipeline.runs import file_sha256

        path = Path(cfg.path)
        # by content: a mesh replaced by another with the same time stamp (cp -p, rsync -a) is not the same scene
        opts = {**cfg.model_dump(exclude=AFTER_RENDERING), "sha256": file_sha256(path) if path.is_file() else None}

        def make(out: Path) -> None:
            notice = InputNotice(f"building scene {_scene_name(ctx, path)!r} from {path}",
                                 f"loading the mesh, rendering {cfg.n_train + cfg.n_test} views; cached for next "
                                 f"time in {cache_entry('mesh', opts)}")
            notice.by_file(path)
            mesh, T = normalize_mesh(load_mesh(path), cfg.extent)
            large = notice.by_count(len(mesh.faces), "faces", LARGE_MESH_FACES)
            (out / INPUT_FRAME).write_text(json.dumps(T.tolist()))
            _render_views(mesh, out, cfg, progress=large and _progress_wanted())

        folder = cached_render("mesh", opts, make)
        half = 0.6 * cfg.extent
        scene = _load(folder, cfg, [-half] * 3 + [half] * 3)
        if (folder / INPUT_FRAME).is_file():
            T = json.loads((folder / INPUT_FRAME).read_text())
        else:  # a scene cached before the transform was kept with it
            T = normalize_mesh(load_mesh(path), cfg.extent)[1]
        scene.meta.update({"source": "mesh", "mesh": str(path), "normalised_extent": cfg.extent,
                           "input_frame": input_frame_record(T, path)})
        return scene

    return load


def build_blender(cfg: BlenderConfig, ctx):
    """Build the ``blender`` scene source from its ``scene:`` block (``BlenderConfig``): returns a loader
    of the folder's splits; ConfigError when there is no ``train`` split."""
    def load() -> SceneData:
        import torch

        from pipeline.scenes.blender import load_blender

        check_split_names(Path(cfg.path), list(cfg.splits), ctx)  # before any image is read
        root = Path(cfg.path)
        found = None
        if cfg.undistort:
            from plugins.scenes.undistortion import undistorted_transforms

            found = undistorted_transforms(root)
        scene = load_blender(found[0] if found else root, splits=tuple(cfg.splits), background=BG[cfg.background],
                             downscale=cfg.downscale, max_images=cfg.max_images, masks=cfg.mask_use, depths=cfg.depths)
        if found:  # the folder as the user gave it; its frames' splits as its own rule gave them
            scene.meta.pop("generator", None)
            scene.meta.update(root=str(root.resolve()), split_rule=found[1]["split_rule"], undistorted=found[1])
            if "masks" in scene.meta:  # (undistorted with the frames, into the cache entry)
                scene.meta["masks"] = f"the frames' mask_path in {found[1]['transforms']} (undistorted)"
        if cfg.aabb is not None:
            scene.aabb = torch.tensor(cfg.aabb, dtype=torch.float32)
        if "train" not in scene.splits:
            raise ConfigError(f"scene.path {cfg.path}: no 'train' split was found; training needs one "
                              f"(splits asked for: {cfg.splits})")
        simulate_pose_error(scene, cfg, cfg.pose_noise_seed)
        return scene

    return load


def build_colmap(cfg: ColmapConfig, ctx):
    """Build the ``colmap`` scene source from its ``scene:`` block (``ColmapConfig``): returns a loader of
    the capture's train and test images, normalised (:mod:`pipeline.scenes.colmap`)."""
    def load() -> SceneData:
        from pipeline.scenes.colmap import load_colmap
        from plugins.scenes.undistortion import undistorted_capture

        root = Path(cfg.path)
        found = undistorted_capture(root, cfg) if cfg.undistort else None
        if found is None:
            return with_input_gt_mesh(load_colmap(root, images=cfg.images, sparse=cfg.sparse,
                                                  background=BG[cfg.background], masks=cfg.masks, depths=cfg.depths,
                                                  **cfg.capture_options()), root, cfg.gt_mesh)
        entry, masks, facts = found
        if cfg.depths is not None:
            warn(f"scene.depths {cfg.depths}: the capture's cameras have lens distortion, and its depth maps are not "
                 f"undistorted with its images, so they are left out (multi-view stereo's depth maps belong to the "
                 f"dense workspace's undistorted images: path: {Path(cfg.path) / 'dense'}, depths: stereo/depth_maps)")
        scene = load_colmap(entry / "capture", images="images", sparse="sparse", background=BG[cfg.background],
                            masks=masks, **cfg.capture_options())
        # the capture as the user gave it; the poses (and so the frame) are its model's
        scene.meta.update(root=str(root.resolve()), images=cfg.images, sparse=facts["model"], undistorted=facts)
        scene.meta["input_frame"]["file"] = facts["model"]
        if masks is not None:
            scene.meta.update(masks=str((root / cfg.masks).resolve()), undistorted_masks=masks)
        return with_input_gt_mesh(scene, root, cfg.gt_mesh)

    return load


def build_neus(cfg: NeusConfig, ctx):
    """Build the ``neus`` scene source from its ``scene:`` block (``NeusConfig``): returns a loader of the IDR /
    NeuS folder in its normalised frame (:mod:`pipeline.scenes.neus`)."""
    def load() -> SceneData:
        from pipeline.scenes.neus import load_neus

        scene = load_neus(Path(cfg.path), background=BG[cfg.background], **cfg.load_options())
        return with_input_gt_mesh(scene, Path(cfg.path), cfg.gt_mesh)

    return load


def photo_folder(path: Path) -> Path:
    """Where the photos of a ``photos`` scene are: ``path/images`` when it is a folder, else ``path``."""
    return path / "images" if (path / "images").is_dir() else path


def build_photos(cfg: PhotosConfig, ctx):
    """Build the ``photos`` scene source from its ``scene:`` block (``PhotosConfig``): returns a loader that poses
    the photos by structure from motion once and loads the capture it makes (:func:`pose_photos`)."""
    def load() -> SceneData:
        from pipeline.types import DataError

        folder = photo_folder(Path(cfg.path))
        if not folder.is_dir():
            raise DataError(f"scene.path {cfg.path} is not a folder; give the folder that holds the photos")
        exposure = getattr(getattr(getattr(ctx, "cfg", None), "train", None), "exposure", "none")
        return with_input_gt_mesh(pose_photos(folder, cfg, compensated=exposure != "none"), Path(cfg.path),
                                  cfg.gt_mesh)

    return load


def pose_photos(folder: Path, cfg: PhotosConfig, what: str = "photos", ordered: bool = False,
                masks: Optional[Path] = None, compensated: bool = False) -> SceneData:
    """The capture of the photos in ``folder``: turned upright and cropped to one size where ``cfg`` asks for it
    (:mod:`pipeline.scenes.upright_photos`), then structure from motion run on them once
    (:func:`pipeline.scenes.sfm.run_sfm`, cached by their contents and the SfM options of ``cfg``), loaded as
    the colmap source loads a capture. With ``cfg.model`` (a run's kept copy of that result) an uncached entry
    is made by undistorting it instead, which gives the same capture: SfM itself does not repeat exactly.
    ``what`` names the photos in the warning about those left out (``frames of walk.mp4``). ``ordered``: the
    photos are frames in time order (by name), and those SfM placed off the camera's path
    (:func:`pipeline.scenes.sfm.path_spikes`) are left out too. ``masks``: the folder of the photos' object masks
    (None: ``cfg.masks`` under ``cfg.path``, if given). ``compensated``: the run learns each photo's exposure
    (``train.exposure``), so photos of several exposures are not warned about."""
    from pipeline.runs import file_sha256
    from pipeline.scenes.colmap import load_colmap
    from pipeline.scenes.sfm import (MIN_PHOTOS, PHOTO_SUFFIXES, model_centres, path_spikes, photo_names, run_sfm,
                                     undistort_model)
    from pipeline.scenes.upright_photos import check_model_sizes, plan_photos, write_copies
    from pipeline.types import DataError

    names = photo_names(folder)
    if len(names) < MIN_PHOTOS:
        raise DataError(f"{folder}: {len(names)} photo(s) ({', '.join(PHOTO_SUFFIXES)}); structure from motion "
                        f"needs at least {MIN_PHOTOS}, and a few dozen around the object do well")
    matcher = cfg.matcher
    if matcher == "auto":  # (videos: every pair while that is affordable)
        from plugins.scenes.config import AUTO_EXHAUSTIVE

        matcher = "exhaustive" if len(names) <= AUTO_EXHAUSTIVE else "keyframes"
    sfm = {"camera_model": cfg.camera_model, "single_camera": cfg.single_camera, "matcher": matcher,
           **({"keyframe_every": cfg.keyframe_every} if matcher == "keyframes" else {}),
           "max_image_size": cfg.max_image_size}
    plan = plan_photos(folder, names, upright=cfg.upright, mixed_orientation=cfg.mixed_orientation,
                       mixed_sizes=cfg.mixed_sizes)
    _warn_sizes(folder, plan, what, cfg.single_camera)
    if not compensated:
        warn_exposure_spread(folder, plan, what)
    groups = plan.cameras()
    if len(groups) > 1:
        sfm["cameras"] = [plan.posed_names(g) for g in groups]
    photos = [[n, (folder / n).stat().st_size, file_sha256(folder / n)] for n in names]
    model = Path(cfg.model) if cfg.model else None
    if model is not None:  # SfM's result for these photos and options, kept: used if they are not cached
        from pipeline.scenes.colmap import find_sparse_model

        model, _ = find_sparse_model(model.parent, model.name)

    posed_names = plan.posed_names(names)  # (HEIC photos are posed as JPEG copies)
    if masks is None and cfg.masks is not None:
        masks = Path(cfg.path) / cfg.masks
    ignored = None
    if masks is not None and cfg.mask_use == "ignore":  # (what moved is not matched either)
        from pipeline.scenes.masks import mask_paths

        ignored = mask_paths(masks, names)

    def make(tmp: Path) -> None:
        source = tmp / "upright" if plan.needed else folder  # (copies: read only until undistortion)
        if plan.needed:
            write_copies(folder, names, source, plan, progress=_progress_wanted())
        if model is None:
            features = None if ignored is None else _feature_masks(ignored, names, plan, tmp / "feature_masks")
            found = run_sfm(source, tmp, names=posed_names, progress=_progress_wanted(), feature_masks=features,
                            **sfm)
            if features is not None:
                shutil.rmtree(features)
                found["feature_masks"] = str(masks)
        else:
            check_model_sizes(model, plan)
            shutil.copytree(model, tmp / "sparse" / "0")
            found = {**undistort_model(source, tmp / "sparse" / "0", tmp, names=posed_names,
                                       progress=_progress_wanted()), "model": str(model)}
        if plan.needed:
            shutil.rmtree(source)
        if plan.facts():
            found["prepared"] = plan.facts()
        if ordered:
            posed, centres = model_centres(tmp / "sparse" / "0")
            order = {n: k for k, n in enumerate(posed_names)}
            mine = [k for k, n in enumerate(posed) if n in order]  # (a kept model holds only these photos)
            found["off_path"] = path_spikes([posed[k] for k in mine], centres[mine], [order[posed[k]] for k in mine])
        (tmp / "meta.json").write_text(json.dumps({"source": "photos", "photos": str(folder), "sfm": found}))

    entry = cached_render("sfm", {"photos": photos, **{k: v for k, v in sfm.items() if k != "cameras"},
                                  **({"ordered": True} if ordered else {}),
                                  **({"prepared": plan.facts()} if plan.facts() else {}),
                                  **({"feature_masks": [_fingerprint(p) for p in ignored]} if ignored else {})},
                          make)
    found = json.loads((entry / "meta.json").read_text())["sfm"]
    if found["unregistered"]:
        warn(f"{folder}: structure from motion left {len(found['unregistered'])} of {found['photos']} {what} "
             f"out of its model (they share too few matches with the others): "
             f"{', '.join(found['unregistered'][:8])}{' ...' if len(found['unregistered']) > 8 else ''}")
    options = cfg.capture_options()
    off_path = found.get("off_path") or []
    if off_path:
        warn(f"{folder}: structure from motion placed {len(off_path)} of the {what} off the camera's path (a jump "
             f"away and back between neighbouring frames), and they are left out: {', '.join(off_path[:8])}"
             f"{' ...' if len(off_path) > 8 else ''}")
        options["exclude"] = (*options["exclude"], *off_path)
    undistorted = _undistorted_masks(cfg, masks, names, plan, entry)
    scene = load_colmap(entry / "capture", images="images", sparse="sparse", background=BG[cfg.background],
                        masks=undistorted, **options)
    scene.meta.update(source="photos", photos=str(folder.resolve()), sfm={**found, "capture": str(entry)},
                      keep={"model": str(entry / "sparse" / "0")})  # a run keeps the model (kept/model)
    if undistorted is not None:  # (the masks the user gave; the undistorted ones are cached)
        scene.meta.update(masks=str(masks.resolve()), undistorted_masks=undistorted)
    return scene


#: photos whose EXIF exposures span more than this factor (about 0.6 of a stop) are warned about when the run
#: does not compensate exposure (train.exposure: none)
EXPOSURE_SPREAD = 1.5


def warn_exposure_spread(folder: Path, plan, what: str) -> None:
    """Warn when the EXIF exposures of ``plan``'s photos (:meth:`PhotoPlan.exposure_spread`) differ by more than
    :data:`EXPOSURE_SPREAD`: one surface is brighter in some photos than in others, which a field can only explain
    with the scene itself; ``train.exposure`` compensates it."""
    spread = plan.exposure_spread()
    if spread is None or spread[0] <= EXPOSURE_SPREAD:
        return
    ratio, dark, bright = spread
    warn(f"{folder}: the {what} were taken at different exposures: by their EXIF tags (exposure time x ISO / "
         f"f-number^2) {bright} ({plan.exposures[bright][1]}) let in {ratio:.1f}x the light of {dark} "
         f"({plan.exposures[dark][1]}), so one surface is brighter in some {what} than in others; a field explains "
         f"that with haze and view-dependent colour. --set train.exposure=gain learns a gain for each photo "
         f"(README: Exposure)")


def _warn_sizes(folder: Path, plan, what: str, single_camera: bool) -> None:
    """Warn what ``plan`` (:class:`pipeline.scenes.upright_photos.PhotoPlan`) does to photos of several sizes or
    lenses."""
    for (w, h), (side, _) in plan.crops.items():
        if w > h:  # (each pair once)
            shots = [sum(plan.sizes[n] == size for n in plan.sizes) for size in ((h, w), (w, h))]
            warn(f"{folder}: {shots[0]} portrait and {shots[1]} landscape {what} of {w}x{h}: each is cropped to its "
                 f"centred {side}x{side} square, so all share one camera (mixed_orientation: error refuses them "
                 f"instead)")
    groups: dict[tuple[int, int], list[str]] = {}
    for name in plan.sizes:
        groups.setdefault(plan.posed_size(name), []).append(name)
    cameras = plan.cameras()
    if plan.assumed and single_camera:
        listed = f"{', '.join(plan.assumed[:6])}{' ...' if len(plan.assumed) > 6 else ''}"
        warn(f"{folder}: {len(plan.assumed)} of the {what} have no EXIF focal length ({listed}); each is posed with "
             f"the camera of the other {what} of its size, which were all taken with one lens")
    if len(cameras) > len(groups) and single_camera:
        lenses = ", ".join(f"{len(g)} at {plan.camera_of(g[0])[2] or 'no focal length'}" for g in cameras)
        warn(f"{folder}: {what} taken with {len(cameras)} lenses or sizes by their EXIF focal length ({lenses}): "
             f"each is posed with a camera of its own")
    if len(groups) > 1:
        sizes = ", ".join(f"{len(g)} of {w}x{h}" for (w, h), g in groups.items())
        how = "each size is posed with a camera of its own" if single_camera else "each is posed with its own camera"
        warn(f"{folder}: {what} of {len(groups)} sizes ({sizes}): {how}, and the undistorted {what} are fitted to "
             f"one size, scaled down and cropped, centred (mixed_sizes: error refuses them instead)")
        w, h = (min(size[i] for size in groups) for i in (0, 1))
        shrunk = [g for size, g in groups.items() if max(w / size[0], h / size[1]) < 0.5]
        if 2 * sum(map(len, shrunk)) > len(plan.sizes):
            small = [n for g in groups.values() if g not in shrunk for n in g]
            listed = f"{', '.join(small[:6])}{' ...' if len(small) > 6 else ''}"
            warn(f"{folder}: the {len(small)} smallest of the {what} ({listed}) set the size the {what} are fitted "
                 f"to, about {w}x{h} (known after undistortion): {sum(map(len, shrunk))} of the {len(plan.sizes)} "
                 f"lose more than half their width and height; remove the small ones from the folder to keep the "
                 f"others' detail")


def _feature_masks(paths: list[Path], names: list[str], plan, out: Path) -> Path:
    """The photos' ignore masks (``paths``, one per photo of ``names``) turned and cropped as their copies are, black
    and white, as COLMAP's feature extraction reads them: ``out/<posed name>.png``; returns ``out``."""
    import imageio.v3 as iio
    import numpy as np

    from pipeline.scenes.masks import read_mask
    from pipeline.scenes.upright_photos import shape_mask

    out.mkdir(parents=True, exist_ok=True)
    for name, posed, path in zip(names, plan.posed_names(names), paths):
        shaped = shape_mask(plan, name, np.round(read_mask(path) * 255).astype(np.uint8))
        iio.imwrite(out / f"{posed}.png", np.where(shaped >= 128, 255, 0).astype(np.uint8))
    return out


def _undistorted_masks(cfg: PhotosConfig, folder: Optional[Path], names: list[str], plan,
                       entry: Path) -> Optional[str]:
    """The folder of the photos' object masks (``folder``) turned, cropped and undistorted as the photos of the
    SfM cache ``entry`` were, cached by the masks' contents, that entry and its cameras; None without masks (a
    warning when ``cfg.path`` holds an unused ``masks`` folder)."""
    from pipeline.runs import file_sha256
    from pipeline.scenes.masks import mask_paths, undistort_masks
    from pipeline.scenes.upright_photos import shape_mask

    if folder is None:
        if (Path(cfg.path) / "masks").is_dir():
            warn(f"{cfg.path} holds a masks folder, which is not used; set scene.masks: masks (--set "
                 f"scene.masks=masks) to composite each photo on the background by its object mask")
        return None
    paths = mask_paths(folder, names)
    model = entry / "sparse" / "0"
    cameras = [file_sha256(p) for p in sorted(model.glob("cameras.*"))]  # (SfM run again finds other cameras)
    key = {"capture": entry.name, "cameras": cameras,
           "masks": [_fingerprint(p) for p in paths]}

    original = dict(zip(plan.posed_names(names), names))

    def make(tmp: Path) -> None:
        undistort_masks(paths, plan.posed_names(names), model, tmp / "masks",
                        turn=lambda posed, mask: shape_mask(plan, original[posed], mask))
        (tmp / "meta.json").write_text(json.dumps({"source": "masks", "masks": str(paths[0].parent),
                                                   "capture": str(entry)}))

    return str(cached_render("masks", key, make) / "masks")


def build_video(cfg: VideoConfig, ctx):
    """Build the ``video`` scene source from its ``scene:`` block (``VideoConfig``): returns a loader that takes
    frames from the video once (:func:`pipeline.scenes.video_frames.take_frames`, cached by the video's contents
    and the frame options) and poses them as photos (:func:`pose_photos`)."""
    def load() -> SceneData:
        from pipeline.runs import file_sha256
        from pipeline.scenes.video_frames import take_frames
        from pipeline.types import DataError

        video = Path(cfg.path)
        if not video.is_file():
            what = "a folder" if video.is_dir() else "not found"
            raise DataError(f"scene.path {cfg.path} is {what}; give a video file (a folder of photos is the photos "
                            f"source)")
        options = {"frames": cfg.frames, "sharpest": cfg.sharpest, "spacing": cfg.spacing,
                   "max_size": cfg.max_frame_size, "start": cfg.start, "end": cfg.end}

        def make(tmp: Path) -> None:
            found = take_frames(video, tmp / "images", progress=_progress_wanted(), **options)
            (tmp / "meta.json").write_text(json.dumps({"source": "video", "frames": found}))

        key = {"video": [video.stat().st_size, file_sha256(video)], **options}
        entry = cached_render("frames", key, make)
        frames = json.loads((entry / "meta.json").read_text())["frames"]
        masks = _frame_masks(cfg, video, entry, frames)
        scene = pose_photos(entry / "images", cfg, what=f"frames of {video}", ordered=True,
                            masks=None if masks is None else masks[0] / "masks")
        scene.meta.update(source="video", video=str(video.resolve()), frames={**frames, "folder": str(entry)})
        if masks is not None:  # the masks the user gave (the frames' are cached)
            scene.meta.update(masks=str(masks[1]), frame_masks=masks[2])
        return with_input_gt_mesh(scene, video.parent, cfg.gt_mesh)

    return load


def _fingerprint(path: Path) -> list:
    """``[name, size, sha256]`` of the file ``path``: what a cache key holds of an input file."""
    from pipeline.runs import file_sha256

    return [path.name, path.stat().st_size, file_sha256(path)]


def _frame_masks(cfg: VideoConfig, video: Path, frames_entry: Path, frames: dict) -> Optional[tuple[Path, Path, dict]]:
    """``(cache entry, the user's masks, facts)`` of the masks of the frames taken (``frames``, of the cache
    ``frames_entry``) from ``cfg.masks`` (:mod:`pipeline.scenes.video_masks`), cached by the masks' contents and
    those frames; None without ``cfg.masks`` (a warning when the video's folder holds an unused ``masks`` folder).
    ``cfg.masks`` is looked for beside the video, then as given."""
    from pipeline.scenes.video_masks import numbered_masks, write_frame_masks
    from pipeline.types import DataError

    if cfg.masks is None:
        if (video.parent / "masks").is_dir():
            warn(f"{video.parent} holds a masks folder, which is not used; set scene.masks: masks (--set "
                 f"scene.masks=masks) to composite each frame taken from {video.name} on the background by its mask")
        return None
    given = Path(cfg.masks)
    found = next((p for p in (video.parent / given, given) if p.exists()), None)
    if found is None:
        where = "does not exist" if given.is_absolute() else \
            f"is neither {video.parent / given} (beside the video) nor {given.absolute()}"
        raise DataError(f"scene.masks {cfg.masks} {where}; give a mask video or a folder of masks named by frame "
                        f"number")
    found = found.resolve()
    if found.is_dir():
        numbered, _ = numbered_masks(found)
        used = [numbered[k] for k in frames["picked"] if k in numbered]  # (a missing one: write_frame_masks says)
        content = [_fingerprint(p) for p in used]
    else:
        content = _fingerprint(found)

    def make(tmp: Path) -> None:
        facts = write_frame_masks(found, frames, tmp / "masks", progress=_progress_wanted())
        (tmp / "meta.json").write_text(json.dumps({"source": "frame masks", "masks": str(found), **facts}))

    entry = cached_render("frame-masks", {"frames": frames_entry.name, "masks": content}, make)
    facts = json.loads((entry / "meta.json").read_text())
    return entry, found, {k: v for k, v in facts.items() if k not in ("source", "masks")}


def _blame_splits(ctx) -> Optional[str]:
    """Whom an error about ``scene.splits`` blames: the ``--set`` that gave it, else the scene file (None
    without a config)."""
    from pipeline.config import where_set

    source = getattr(getattr(ctx, "cfg", None), "source", None)
    return where_set(source, getattr(ctx, "overrides", ()) or (), "scene.splits") if source else None


def check_split_names(root: Path, splits: list[str], ctx=None) -> None:
    """A ``scene.splits`` entry the dataset folder ``root`` does not hold is a ConfigError naming
    ``scene.splits`` (or the ``--set`` that gave it), the name, the splits the folder holds and the
    nearest of them; a standard NeRF name (train, val, test) the folder lacks is left to the loader,
    which warns and goes on (a dataset without a val split is common, and a scene file may list it)."""
    import difflib

    from pipeline.scenes.blender import NERF_SPLITS, dataset_splits

    if all(s in NERF_SPLITS for s in splits):  # nothing to refuse: no need to read the folder
        return
    found = dataset_splits(root, splits)
    if found is None:  # no dataset there: the loader's error says so
        return
    held, where = found
    bad = [s for s in dict.fromkeys(splits) if s not in held and s not in NERF_SPLITS]
    if not bad:
        return
    near = {b: m[0] for b in bad for m in [difflib.get_close_matches(b, held, n=1, cutoff=0.6)] if m}
    names = f"no split {bad[0]!r}" if len(bad) == 1 else f"none of the splits {', '.join(map(repr, bad))}"
    blame = _blame_splits(ctx)
    text = (f"{blame + ': ' if blame else ''}scene.splits = [{', '.join(splits)}]: {root} has {names}; "
            f"it holds the splits {', '.join(held) or 'none'} ({where})")
    if len(bad) == 1 and near:
        text += f"; did you mean {near[bad[0]]!r}?"
    elif near:
        text += "; did you mean " + ", ".join(f"{m!r} for {b!r}" for b, m in near.items()) + "?"
    raise ConfigError(text)


#: files that hold points only (a .ply holds points or a mesh)
POINT_SUFFIXES = (".npy", ".xyz", ".txt", ".pts")
#: what reading a point file does, as an :class:`InputNotice` says it
POINT_STEPS = "reading the points, leaving out repeated ones"


def _read_points(path: Path, notice: Optional[InputNotice] = None):
    """(P,3) points and optional (P,3) normals from .npy/.xyz/.txt/.ply point files; ``notice`` (default: one
    naming the file) is said when the file or its point count is large."""
    import numpy as np

    from pipeline.types import DataError

    notice = notice or InputNotice(f"reading point file {path}", POINT_STEPS)
    suffix = path.suffix.lower()
    if suffix in POINT_SUFFIXES:  # (a .ply may hold a mesh: it is told by its point count once read)
        notice.by_file(path)
    try:
        if suffix == ".npy":
            a = np.load(path)
        elif suffix in (".xyz", ".txt", ".pts"):
            a = np.loadtxt(path, ndmin=2)
        else:
            import trimesh

            pc = trimesh.load(path)
    except Exception as exc:  # numpy's and trimesh's parsers raise many types on a damaged file
        why = (str(exc).splitlines() or [""])[0]
        raise DataError(f"cannot read point file {path}: {type(exc).__name__}: {why} (expected .npy, or "
                        f".xyz/.txt/.pts with 3 or 6 numbers per line, or a .ply)") from None
    if suffix not in POINT_SUFFIXES:
        import trimesh

        if not isinstance(pc, trimesh.PointCloud):
            return None
        a = np.asarray(pc.vertices)
        n = pc.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")
        if n is not None and all(k in n.dtype.names for k in ("nx", "ny", "nz")):
            a = np.concatenate([a, np.stack([n["nx"], n["ny"], n["nz"]], -1)], 1)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] not in (3, 6) or len(a) == 0:
        raise DataError(f"point file {path}: expected an (N,3) or (N,6) array of xyz[+normal], got shape {a.shape}")
    notice.by_count(len(a), "points", LARGE_POINT_COUNT)
    if not np.isfinite(a).all():
        raise DataError(f"point file {path}: contains NaN or inf values")
    from plugins.scenes.repeated_points import first_occurrences

    first = first_occurrences(a[:, :3])
    if len(first) < 2 or float(np.ptp(a[:, :3], axis=0).max()) <= 0:
        raise DataError(f"point file {path}: all {len(a)} points coincide, so there is no shape to fit "
                        f"(give a point cloud of a surface)")
    if len(first) < len(a):  # libigl's point winding numbers crash on repeated points (seams of a mesh's vertices)
        warn(f"point file {path}: {len(a) - len(first)} of its {len(a)} points repeat an earlier point; "
             f"the repeats are left out")
        a = a[first]
    return a[:, :3], (a[:, 3:] if a.shape[1] == 6 else None)


#: in a cached mesh scene: the 4x4 transform (JSON) from the input mesh's coordinates to the scene's
INPUT_FRAME = "input_frame.json"


def normalize_points(points, extent: float):
    """``(points', T)``: ``points`` (P, 3) with their bounding box centred at the origin and its largest side
    scaled to ``extent``, and the 4x4 ``T`` that does it (``p' = s * (p - c)``), as
    :func:`pipeline.scenes.mesh_render.normalize_mesh` does for a mesh."""
    import numpy as np

    lo, hi = points.min(0), points.max(0)
    s = extent / float((hi - lo).max())
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * (lo + hi) / 2
    return (points - (lo + hi) / 2) * s, T


def input_frame_record(T, path) -> dict:
    """What a run records (scene.json ``input_frame``) of how its input file was normalised: ``T``, the
    4x4 transform from the file's coordinates to the run's (``p' = scale * (p - centre)``), with its
    scale and centre, and the file. ``nls export --frame input`` maps meshes back with its inverse."""
    import numpy as np

    T = np.asarray(T, dtype=np.float64)
    scale = float(T[0, 0])
    return {"file": str(path), "scale": scale, "centre": (-T[:3, 3] / scale).tolist(),
            "to_run": T.tolist()}


#: in a ``geometry`` scene's cache folder: the mesh's surface samples, normals and 4x4 input frame (.npz)
SURFACE_SAMPLES = "surface_samples.npz"


def write_surface_samples(path: Path, points: "np.ndarray", normals: "np.ndarray", T: "np.ndarray") -> None:
    """Write ``points`` (P, 3), ``normals`` (P, 3) and the 4x4 ``T`` to ``path`` (.npz, atomically)."""
    import io

    import numpy as np

    from pipeline.runs import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, points=np.asarray(points, np.float64), normals=np.asarray(normals, np.float64),
             T=np.asarray(T, np.float64))
    atomic_write_bytes(path, buf.getvalue())


def read_surface_samples(path: Path) -> Optional[tuple["np.ndarray", "np.ndarray", "np.ndarray"]]:
    """``(points (P, 3), normals (P, 3), T (4, 4))`` as :func:`write_surface_samples` wrote them, or None when
    the file is missing or damaged (then the mesh is sampled again)."""
    import numpy as np

    try:
        with np.load(path) as z:
            points, normals, T = z["points"], z["normals"], z["T"]
    except Exception:  # missing, truncated, not an npz, a key left out: sample again
        return None
    ok = points.ndim == 2 and points.shape[1:] == (3,) and normals.shape == points.shape and T.shape == (4, 4)
    return (points, normals, T) if ok and len(points) else None


def build_geometry(cfg, ctx):
    """Build the ``geometry`` scene source from its ``scene:`` block (``GeometryConfig``): returns a loader
    of a normalised point cloud (with normals when known) from a mesh or point file, no images."""
    def load() -> SceneData:
        import numpy as np
        import torch
        import trimesh

        from pipeline.scenes.mesh_render import load_mesh, normalize_mesh
        from pipeline.types import DataError

        path = Path(cfg.path)
        if not path.exists():
            raise DataError(f"scene.path {path} does not exist; give a mesh or point-cloud file")
        head = f"loading scene {_scene_name(ctx, path)!r} from {path}"
        from pipeline.runs import file_sha256

        key = hashlib.sha256(json.dumps([cfg.model_dump(), file_sha256(path)]).encode()).hexdigest()[:16]
        out = cache_root() / "geometry" / key
        gt = out / "gt_mesh.ply"
        # a mesh sampled by an earlier run (same file, same options); checked first, as a .ply is told
        # apart from a point cloud only by reading it
        cached = read_surface_samples(out / SURFACE_SAMPLES) if gt.is_file() else None
        pts = (None if cached is not None or path.suffix.lower() in (".obj", ".off", ".stl", ".glb")
               else _read_points(path, InputNotice(head, POINT_STEPS)))
        if cached is not None:
            points, normals, T = cached
        elif pts is None:
            make_cache_dir(out)
            notice = InputNotice(head, f"loading the mesh, sampling {cfg.n_points:,} surface points; cached "
                                       f"for next time in {out}")
            notice.by_file(path)
            mesh, T = normalize_mesh(load_mesh(path), cfg.extent)
            notice.by_count(len(mesh.faces), "faces", LARGE_MESH_FACES)
            points, faces = trimesh.sample.sample_surface(mesh, cfg.n_points, seed=cfg.seed)
            normals = mesh.face_normals[faces]
            from pipeline.runs import atomic_write_bytes

            atomic_write_bytes(gt, mesh.export(file_type="ply"))  # the samples' file last: it marks a whole entry
            write_surface_samples(out / SURFACE_SAMPLES, points, normals, T)
        else:
            points, normals = pts
            points, T = normalize_points(points, cfg.extent)
            gt = None
        half = 0.5 * cfg.extent + cfg.box_margin
        return SceneData(splits={}, aabb=torch.tensor([-half] * 3 + [half] * 3, dtype=torch.float32),
                         gt_mesh=gt, points=np.asarray(points, np.float32),
                         normals=None if normals is None else np.asarray(normals, np.float32),
                         meta={"source": "geometry", "input": str(path), "normalised_extent": cfg.extent,
                               "input_frame": input_frame_record(T, path)})

    return load
