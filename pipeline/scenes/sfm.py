"""Structure from motion for a folder of photos without poses, with pycolmap: the poses, intrinsics and sparse
points that turn it into a COLMAP capture (:mod:`pipeline.scenes.colmap` reads the result).

The steps are COLMAP's own, run through pycolmap (the ``colmap`` extra): SIFT features on the CPU (on CUDA
where pycolmap was built with it), exhaustive or sequential matching with geometric verification,
incremental mapping, and undistortion. The largest model is kept; images it does not register are named and
left out. Undistortion writes pinhole images and cameras, so the lens distortion the mapper estimated is
removed rather than ignored (the colmap loader reads a distorted camera as its pinhole part only). Each step
can be stopped with Ctrl-C (:func:`run_cancellable`).

Layout written into ``out``: ``sparse/0/`` (the mapper's model, distorted cameras) and ``capture/`` (``images/``
undistorted and ``sparse/`` with PINHOLE cameras), which is a COLMAP capture. The feature database is deleted
once the model is written.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np

from pipeline.scenes.camera_fit import Fit, fit_facts, fits_to_one_size
from pipeline.types import DataError

#: suffixes of the photos read from a folder (case-insensitive); HEIC/HEIF ones are posed from JPEG copies
#: (:mod:`pipeline.scenes.upright_photos`), since COLMAP does not read them
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".heic", ".heif")
#: fewer photos than this cannot make a model worth training on
MIN_PHOTOS = 3
#: camera models the mapper may estimate (one per photo, or one shared: ``single_camera``)
SFM_CAMERAS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def photo_names(folder: Path) -> list[str]:
    """The photos directly in ``folder`` (by :data:`PHOTO_SUFFIXES`), sorted by name."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def run_cancellable(pycolmap, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, a pycolmap step that may run for minutes, run so that Ctrl-C (or SIGTERM turned into
    KeyboardInterrupt) stops it: in a worker thread (pycolmap releases the GIL), with a ``CancellationToken`` that
    the interrupt cancels before it goes on up. A pycolmap without tokens (before 3.12) runs it as it is."""
    if not hasattr(pycolmap, "CancellationToken"):
        return fn(*args, **kwargs)
    token = pycolmap.CancellationToken()
    box: dict[str, Any] = {}
    done = threading.Event()  # (not Thread.join: once an interrupt breaks into join, a later join may not wait)

    def work() -> None:
        try:
            box["value"] = fn(*args, cancellation_token=token, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=getattr(fn, "__name__", "pycolmap"), daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except BaseException:  # the interrupt: COLMAP stops within a second, then the interrupt goes on
        token.cancel()
        done.wait()
        raise
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _say(text: str, progress: bool) -> None:
    if progress:
        print(f"structure from motion: {text}", file=sys.stderr, flush=True)


#: frames matched with each frame on either side by ``sequential`` (COLMAP's default) and ``keyframes`` matching
SEQUENTIAL_OVERLAP = 10


def keyframe_pairs(n: int, every: int, overlap: int = SEQUENTIAL_OVERLAP) -> list[tuple[int, int]]:
    """The pairs ``keyframes`` matching matches among ``n`` photos in order: each with its next ``overlap``, and
    every pair of the key frames, every ``every``-th from the first (so loops and returns are joined as exhaustive
    matching joins them): n·overlap + (n/every)²/2 pairs instead of n²/2. Sorted (i, j), i < j."""
    near = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + overlap + 1))}
    keys = range(0, n, every)
    return sorted(near | {(i, j) for i in keys for j in keys if i < j})


def run_sfm(photos: Path, out: Path, *, names: Sequence[str], camera_model: str = "SIMPLE_RADIAL",
            single_camera: bool = True, cameras: Optional[Sequence[Sequence[str]]] = None,
            matcher: Literal["exhaustive", "sequential", "keyframes"] = "exhaustive", keyframe_every: int = 10,
            max_image_size: int = 1600, threads: int = -1, seed: int = 0, progress: bool = True,
            feature_masks: Optional[Path] = None) -> dict:
    """Run SfM on the photos ``names`` in ``photos`` into ``out`` (see the module docstring); returns what it
    found: ``{"photos", "registered", "unregistered" (names), "models", "points", "mean_reprojection_error",
    "seconds": {step: s}, ...options}``. ``cameras``: the photos grouped by camera (by size and lens:
    :meth:`pipeline.scenes.upright_photos.PhotoPlan.cameras`); with ``single_camera`` the photos of each group
    share a camera, the groups do not. ``feature_masks``: a folder of masks named ``<photo name>.png`` (COLMAP's
    ``mask_path``), black where no feature is to be extracted. DataError when no model
    registers at least :data:`MIN_PHOTOS` photos."""
    from pipeline.scenes.colmap import _pycolmap

    pycolmap = _pycolmap(photos)
    pycolmap.logging.minloglevel = 2  # errors only: COLMAP's progress logs run to thousands of lines
    db = out / "database.db"
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    _say(f"extracting SIFT features from {len(names)} photos in {photos}", progress)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    if feature_masks is not None:
        reader.mask_path = str(feature_masks)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(max_image_size)
    extraction.num_threads = int(threads)
    groups = [list(g) for g in cameras] if cameras and single_camera and len(cameras) > 1 else [list(names)]
    if len(groups) > 1:
        _say(f"{len(groups)} cameras by size and lens, of {', '.join(str(len(g)) for g in groups)} photos",
             progress)
    for group in groups:  # (each call with CameraMode.SINGLE makes a camera of its own)
        run_cancellable(pycolmap, pycolmap.extract_features, db, photos, image_names=group,
                        camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE,
                        reader_options=reader, extraction_options=extraction)
    seconds["features"] = time.perf_counter() - t
    t = time.perf_counter()
    if matcher == "keyframes":
        chosen = keyframe_pairs(len(names), keyframe_every)
        listed = out / "pairs.txt"
        listed.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in chosen))
        pairing = pycolmap.ImportedPairingOptions()
        pairing.match_list_path = str(listed)
        _say(f"matching (keyframes: neighbours and every {keyframe_every}th, {len(chosen):,} pairs)", progress)
        run_cancellable(pycolmap, pycolmap.match_image_pairs, db, pairing_options=pairing)
        listed.unlink()
    else:
        pairs = len(names) * (len(names) - 1) // 2
        _say(f"matching ({matcher}{f', {pairs:,} pairs' if matcher == 'exhaustive' else ''})", progress)
        run_cancellable(pycolmap, pycolmap.match_exhaustive if matcher == "exhaustive" else pycolmap.match_sequential,
                        db)
    seconds["matching"] = time.perf_counter() - t
    t = time.perf_counter()
    mapped = out / "mapped"
    mapped.mkdir()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = int(threads)
    options.random_seed = int(seed)
    from pipeline.progress import StepProgress

    with StepProgress(len(names), 0, "structure from motion: mapping", enabled=progress) as bar:
        placed = [0]  # photos the mapper has registered (in every model it starts), as its callbacks tell

        def register(n: int) -> None:
            placed[0] += n
            bar.advance(min(placed[0], len(names)), "photos placed (in any model)")

        models = run_cancellable(pycolmap, pycolmap.incremental_mapping, db, photos, mapped, options=options,
                                 initial_image_pair_callback=lambda: register(2),
                                 next_image_callback=lambda: register(1))
    seconds["mapping"] = time.perf_counter() - t
    if not models:
        hint = "" if matcher == "exhaustive" else ", or matcher: exhaustive"
        raise DataError(f"{photos}: structure from motion registered no photos ({len(names)} given): they share too "
                        f"few features (give views that overlap more, with more texture{hint})")
    best = max(models.values(), key=lambda r: r.num_reg_images())
    _say(f"the largest of {len(models)} model(s) holds {best.num_reg_images()} of the {len(names)} photos", progress)
    if best.num_reg_images() < MIN_PHOTOS:
        raise DataError(f"{photos}: structure from motion registered only {best.num_reg_images()} of {len(names)} "
                        f"photos in its largest model; at least {MIN_PHOTOS} are needed")
    model = out / "sparse" / "0"
    model.mkdir(parents=True)
    best.write(model)
    shutil.rmtree(mapped)
    db.unlink()  # features and matches: 24 MB for 115 photos of 400x400, far more for real photos; not read again
    found = undistort_model(photos, model, out, names=names, progress=progress)
    return {**found, "models": len(models), "camera_model": camera_model, "single_camera": single_camera,
            **({"cameras": len(groups)} if len(groups) > 1 else {}),
            "matcher": matcher, **({"keyframe_every": int(keyframe_every)} if matcher == "keyframes" else {}),
            "max_image_size": int(max_image_size),
            "seconds": {**{k: round(v, 2) for k, v in seconds.items()}, **found["seconds"]}}


def undistorted_fits(pycolmap, rec) -> dict[int, Fit]:
    """camera id -> :class:`~pipeline.scenes.camera_fit.Fit` of each camera's undistorted image (COLMAP's default
    undistortion, whose size follows each camera's distortion) to one size
    (:func:`pipeline.scenes.camera_fit.fits_to_one_size`); empty when they are one size already (one camera, or
    pinhole ones). Photos of several cameras (``single_camera: false``, or several sizes of photo) come out of
    undistortion at several sizes, and a split is loaded at one size."""
    options = pycolmap.UndistortCameraOptions()
    sizes = {}
    for cid, cam in rec.cameras.items():
        u = pycolmap.undistort_camera(options, cam)
        sizes[int(cid)] = (int(u.width), int(u.height))
    return fits_to_one_size(sizes)


def _fit_capture(pycolmap, capture: Path, fits: dict[int, Fit], progress: bool = True) -> None:
    """Fit the undistorted images of ``capture`` (``images/``, ``sparse/``) to one size by ``fits`` (camera id ->
    :class:`Fit`; :func:`undistorted_fits`), moving and scaling each pinhole camera's principal point, focal
    length and each image's keypoints alike."""
    from PIL import Image

    from pipeline.progress import StepProgress

    rec = pycolmap.Reconstruction(capture / "sparse")
    for cid, cam in rec.cameras.items():
        fit = fits[int(cid)]
        fx, fy, cx, cy = (float(v) for v in cam.params)  # PINHOLE, as undistortion writes it
        cam.width, cam.height, cam.params = *fit.size, list(fit.intrinsics(fx, fy, cx, cy))
    with StepProgress(len(rec.images), 0, "fitting photos to one size", enabled=progress) as bar:
        for k, im in enumerate(rec.images.values()):
            fit = fits[int(im.camera_id)]
            for point in im.points2D:
                point.xy = fit.point(point.xy)
            path = capture / "images" / im.name
            with Image.open(path) as image:
                fitted = fit.image(image)
                fitted.load()
            jpeg = path.suffix.lower() in (".jpg", ".jpeg")
            fitted.save(path, **({"quality": 95, "subsampling": 0} if jpeg else {}))
            bar.advance(k + 1, im.name)
    rec.write(capture / "sparse")


def undistort_model(photos: Path, model: Path, out: Path, *, names: Sequence[str], progress: bool = True) -> dict:
    """Undistort the photos of the sparse model at ``model`` (cameras, images, points3D) into ``out/capture``
    (pinhole images and cameras, a COLMAP capture; an RGBA photo keeps its alpha, :func:`keep_alpha`); returns
    ``{"photos", "registered", "unregistered" (names of ``names`` the model has no pose for), "points",
    "mean_reprojection_error", "seconds"}``. Undistortion is a function of the model and the photos alone, so a
    kept model gives the capture again exactly."""
    from pipeline.scenes.colmap import _has_pose, _pycolmap

    pycolmap = _pycolmap(photos)
    pycolmap.logging.minloglevel = 2  # errors only: COLMAP logs each image it undistorts
    rec = pycolmap.Reconstruction(model)
    registered = {im.name for im in rec.images.values() if _has_pose(im)}
    t = time.perf_counter()
    _say(f"undistorting the {len(registered)} registered photos", progress)
    run_cancellable(pycolmap, pycolmap.undistort_images, out / "capture", model, photos)
    fits = undistorted_fits(pycolmap, rec)
    fitted = {"fitted": fit_facts(fits)} if fits else {}
    if fits:  # (several cameras: one size for the split)
        (w, h), scaled = fitted["fitted"]["size"], fitted["fitted"]["scaled"]
        _say(f"fitting the undistorted photos of {len(rec.cameras)} cameras to one size, {w}x{h} ({scaled} "
             f"camera(s) scaled, the others cropped)", progress)
        _fit_capture(pycolmap, out / "capture", fits, progress)
    keep_alpha(photos, sorted(registered), model, out / "capture" / "images", out / "alpha")
    return {"photos": len(names), "registered": len(registered),
            "unregistered": [n for n in names if n not in registered], "points": int(rec.num_points3D()),
            "mean_reprojection_error": float(rec.compute_mean_reprojection_error()), **fitted,
            "seconds": {"undistortion": round(time.perf_counter() - t, 2)}}


def keep_alpha(folder: Path, names: list[str], model: Path, images: Path, scratch: Path) -> None:
    """COLMAP's undistortion writes colour only: give each undistorted image in ``images`` whose original in
    ``folder`` has an alpha channel that alpha, undistorted as its colour was (as a mask,
    :func:`pipeline.scenes.masks.undistort_masks`, through ``scratch``, removed after)."""
    import imageio.v3 as iio

    from pipeline.scenes.masks import undistort_masks

    def has_alpha(path: Path) -> bool:
        try:
            return iio.improps(path).shape[-1:] == (4,)
        except Exception:  # (a format imageio cannot read the header of: COLMAP read it, and it has no alpha here)
            return False

    with_alpha = [n for n in names if has_alpha(folder / n)]
    if not with_alpha:
        return

    def alpha(path: Path) -> np.ndarray:
        rgba = np.asarray(iio.imread(path))
        return rgba[..., 3].astype(np.float32) / float(np.iinfo(rgba.dtype).max)

    undistort_masks([folder / n for n in with_alpha], with_alpha, model, scratch, read=alpha)
    for name in with_alpha:
        colour = np.asarray(iio.imread(images / name))[..., :3]
        iio.imwrite(images / name, np.concatenate([colour, np.asarray(iio.imread(scratch / f"{name}.png"))[..., None]
                                                   ], -1))
    shutil.rmtree(scratch)


#: a frame is off its path when the detour through it is this many times the way past it (and long: below)
SPIKE_DETOUR = 4.0
#: ... and when it lies this many median steps from both neighbours (so jitter while the camera stands still,
#: whose detours are long relative to nothing, is not taken for one)
SPIKE_STEPS = 5.0


def path_spikes(names: Sequence[str], centres: "np.ndarray", index: Sequence[int]) -> list[str]:
    """The frames of a camera path in time order registered off it: ``names`` with camera ``centres`` (N, 3)
    and their ``index`` in the video (increasing). Frame i is a spike when the way from its neighbours through
    it is more than :data:`SPIKE_DETOUR` times the way past it, d(i-1, i) + d(i, i+1) > SPIKE_DETOUR ·
    max(d(i-1, i+1), m), and both its steps exceed :data:`SPIKE_STEPS` · m, where m is the median step per
    frame of index times the index gaps. A camera that speeds up, turns or stops makes no spike; one that SfM
    placed elsewhere (a view that looks like another side of the object) jumps away and back. The first and
    last frames are judged by their one neighbour and the next: spike when d(0, 1) > SPIKE_STEPS ·
    m and d(0, 2) > SPIKE_DETOUR · d(1, 2) (likewise at the end)."""
    c = np.asarray(centres, np.float64)
    idx = np.asarray(index, np.float64)
    if len(c) < 4:
        return []
    steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
    gaps = np.maximum(np.diff(idx), 1.0)
    per_frame = float(np.median(steps / gaps))
    if per_frame <= 0:
        return []
    far = lambda a, b: np.linalg.norm(c[a] - c[b])  # noqa: E731
    limit = lambda a, b: SPIKE_STEPS * per_frame * max(abs(idx[b] - idx[a]), 1.0)  # noqa: E731
    spikes = []
    for i in range(len(c)):
        if 0 < i < len(c) - 1:
            a, b = i - 1, i + 1
            detour = far(a, i) + far(i, b)
            if far(a, i) > limit(a, i) and far(i, b) > limit(i, b) and \
                    detour > SPIKE_DETOUR * max(far(a, b), per_frame):
                spikes.append(names[i])
        else:  # an end: its neighbour n and the one beyond it, m
            n, m = (1, 2) if i == 0 else (i - 1, i - 2)
            if far(i, n) > limit(i, n) and far(i, m) > SPIKE_DETOUR * max(far(n, m), per_frame):
                spikes.append(names[i])
    return spikes


def model_centres(model: Path) -> tuple[list[str], "np.ndarray"]:
    """(names, camera centres (N, 3)) of the registered images of the sparse model at ``model``, by name."""
    from pipeline.scenes.colmap import _has_pose, _pycolmap, _world_to_camera

    pycolmap = _pycolmap(model)
    rec = pycolmap.Reconstruction(model)
    posed = sorted((im for im in rec.images.values() if _has_pose(im)), key=lambda im: im.name)
    poses = [_world_to_camera(pycolmap, im, model) for im in posed]
    return [im.name for im in posed], np.asarray([-rot.T @ t for rot, t in poses], np.float64).reshape(-1, 3)

