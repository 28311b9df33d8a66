"""Build a run's components from a validated :class:`~pipeline.config.SceneConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from pipeline.config import SceneConfig
from pipeline.notices import warn
from pipeline.types import ConfigError, NLSError, PluginError, SceneData, component_label, plugin_errors


@dataclass
class BuildContext:
    """Handed to every component factory as ``ctx``.

    cfg: the whole scene config; scene: the loaded scene (None while building the source);
    device: torch device; aabb: (6,) scene box tensor (None while building the source);
    extra: free slot for plugins; overrides: the ``--set`` options, given to the scene source.
    """

    cfg: SceneConfig
    device: Any
    scene: Optional[SceneData] = None
    aabb: Any = None
    extra: dict = field(default_factory=dict)
    #: the command's ``--set`` options (when the scene source is built), so its errors can blame the one at fault
    overrides: tuple[str, ...] = ()


def pick_device(name: str):
    """``auto``, ``cpu`` or ``cuda`` as a :class:`torch.device` (``auto``: cuda when available, else cpu);
    ``cuda`` without a CUDA device raises NLSError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NLSError("--device cuda was asked for, but torch sees no CUDA device (this torch build: "
                       f"{torch.__version__}). Use --device cpu or auto, or install a CUDA build of torch "
                       "(README: 'Installing on a CUDA machine').")
    return torch.device(name)


def max_threads() -> int:
    """The most CPU threads nls accepts: 4 per core, at least 64 (torch crashes on a count in the 10^5s,
    and far more threads than cores only slows it)."""
    return max(64, 4 * (os.cpu_count() or 1))


def env_threads() -> Optional[int]:
    """``NLS_THREADS`` as a thread count, None when unset or empty; anything but a whole number in
    1..:func:`max_threads` raises NLSError naming the variable."""
    given = os.environ.get("NLS_THREADS", "").strip()
    if not given:
        return None
    if not given.isdigit() or not 1 <= int(given) <= max_threads():
        raise NLSError(f"NLS_THREADS = {given!r}: give a whole number of CPU threads in 1..{max_threads()} (this "
                       f"machine has {os.cpu_count() or 1} cores), or unset it to use all of them")
    return int(given)


def setup_threads(threads: Optional[int]) -> None:
    """Pick a sane CPU thread count; OMP_WAIT_POLICY=PASSIVE is set by the CLI before torch loads."""
    import torch

    n = threads or env_threads() or (os.cpu_count() or 1)
    if n > max_threads():
        raise NLSError(f"train.threads = {n}: give a whole number of CPU threads in 1..{max_threads()} (this "
                       f"machine has {os.cpu_count() or 1} cores), or leave it unset to use all of them")
    torch.set_num_threads(max(1, n))


def check_scene_path(cfg: SceneConfig, overrides: Sequence[str] = ()) -> None:
    """A ``scene.path`` that does not exist is a ConfigError naming the scene file (or the ``--set``
    among ``overrides`` that gave it), the key and the path, with what :func:`missing_path_message`
    adds (the data root and its origin, near names)."""
    from pipeline.config import where_set
    from pipeline.scenes import missing_path_message

    path = getattr(getattr(cfg.stages["scene"], "options", None), "path", None)
    why = missing_path_message(path) if isinstance(path, str) else None
    if why is None:
        return
    raise ConfigError(f"{where_set(cfg.source, overrides, 'scene.path')}: scene.path = {path!r}: {why}")


def load_scene_data(cfg: SceneConfig, device, overrides: Sequence[str] = ()) -> SceneData:
    """Build the ``scene:`` stage and return its :class:`SceneData` (a callable result is called
    first); any other result raises PluginError. A missing ``scene.path`` is a ConfigError first
    (:func:`check_scene_path`; ``overrides`` are the ``--set`` options, to name the one that gave it)."""
    check_scene_path(cfg, overrides)
    ctx = BuildContext(cfg, device, overrides=tuple(overrides))
    result = cfg.stages["scene"].build(ctx)
    if callable(result):
        with plugin_errors(f"{component_label(result)} failed while loading the scene"):
            scene = result()
    else:
        scene = result
    if not isinstance(scene, SceneData):
        raise PluginError(f"scene source {cfg.stages['scene'].name!r} returned {type(scene).__name__}, "
                       f"not SceneData (plugin {cfg.stages['scene'].component.plugin!r} is broken)")
    return scene


def load_scene_for_command(cfg: SceneConfig, device, overrides: Sequence[str] = (), *,
                           quiet: bool = False) -> SceneData:
    """:func:`load_scene_data` as the commands run it: ``quiet`` (``-q``) hides the bar of a large
    scene's first build, and SIGTERM stops the load as Ctrl-C does (KeyboardInterrupt, exit 130), so a
    first build removes its temporary cache folder. SIGTERM's default would end the process on the spot,
    silently, with exit 143 and the half-written folder left behind."""
    from pipeline.mesh import progress_default
    from pipeline.signals import sigterm_as_interrupt

    with progress_default(False if quiet else None), sigterm_as_interrupt():
        return load_scene_data(cfg, device, overrides)


def build_system(cfg: SceneConfig, scene: SceneData, device, *, losses: bool = True):
    """Instantiate field, certifier, density map, renderer and (unless ``losses`` is False, for
    commands that only use the trained model) the losses; move them to ``device``."""
    from pipeline.system import FieldChain, System, as_module

    ctx = BuildContext(cfg, device, scene, scene.aabb.float())
    built = {s: (cfg.stages[s].build(ctx) if cfg.stages.get(s) else None)
             for s in ("field", "certifier", "density", "renderer")}
    chain = FieldChain(*(as_module(built[s], cfg.stages[s].component.label if cfg.stages.get(s) else None)
                         for s in ("field", "certifier", "density")))
    if built["renderer"] is not None:
        check_renderer(built["renderer"])
    if cfg.stages.get("extractor"):
        cfg.stages["extractor"].build(ctx)  # its options are checked against the scene before any training
    terms = {f"{i}_{c.name}": as_module(c.build(ctx), c.component.label) for i, c in enumerate(cfg.losses)} \
        if losses else {}
    exposure = build_exposure(cfg, scene, training=losses)
    poses = build_pose_refinement(cfg, scene, training=losses)
    if poses is not None and poses.focal is not None:  # the field's frame follows the focal length (dolly zoom)
        chain.set_frame(poses.focal.to_field)
    return System(chain, built["renderer"], terms, scene.aabb, exposure, poses).to(device)


def build_exposure(cfg: SceneConfig, scene: SceneData, *, training: bool = True):
    """The training images' colour transforms that ``train.exposure`` asks for (None for ``none``). A scene
    without training images, or without a renderer to render them, is a ConfigError naming the key when
    ``training``; otherwise (a trained run opened to render or evaluate) it has none."""
    t = cfg.train
    if t.exposure == "none":
        return None
    from pipeline.exposure import ImageExposure

    train = _training_views(cfg, scene, "exposure", "a colour transform", "none", training)
    if train is None:
        return None
    return ImageExposure(len(train), t.exposure, t.exposure_lr)


def _training_views(cfg: SceneConfig, scene: SceneData, key: str, what: str, off: str, training: bool):
    """The training split that a per-training-image part (``train.<key>``, which learns ``what``; ``off`` is
    the setting without it) is built for; None when there is none (or no renderer) and the run is not
    ``training``; a ConfigError naming the key when it is."""
    train = scene.splits.get("train")
    if train is not None and len(train) > 0 and cfg.stages.get("renderer"):
        return train
    if not training:
        return None
    value = getattr(cfg.train, key)
    raise ConfigError(f"train.{key}: {str(value).lower() if isinstance(value, bool) else value} learns {what} "
                      f"for each training image, but this scene "
                      f"{'has no renderer' if train else 'has no training images'}; use train.{key}: {off}")


def build_pose_refinement(cfg: SceneConfig, scene: SceneData, *, training: bool = True):
    """The training cameras' pose and focal-length corrections that ``train.refine_poses`` and
    ``train.refine_focal`` ask for (None when both are off); like :func:`build_exposure`, a scene without training
    images or renderer is refused when ``training``."""
    t = cfg.train
    if not (t.refine_poses or t.refine_focal):
        return None
    from pipeline.focal_refinement import FocalRefinement, zoom_centre
    from pipeline.pose_refinement import PoseRefinement

    key, what = (("refine_poses", "a pose correction") if t.refine_poses
                 else ("refine_focal", "a focal-length correction"))
    train = _training_views(cfg, scene, key, what, "false", training)
    if train is None and t.refine_focal and cfg.stages.get("renderer"):
        raise ConfigError("train.refine_focal: true: this run learned its focal length, and its field lives in the "
                          "frame that goes with it, which is built with the training cameras; this scene has no "
                          "training images loaded: keep train in scene.splits")
    if train is None:
        return None
    focal = (FocalRefinement(train.cameras, zoom_centre(train.cameras, scene.aabb), t.focal_lr,
                             per_camera=t.focal_per_camera) if t.refine_focal else None)
    if training and focal is not None and t.focal_per_camera and focal.n_cameras == 1:
        warn(f"train.focal_per_camera: true, but all {len(train)} training images have the same given intrinsics, "
             f"so they are one camera with one focal-length factor")
    return PoseRefinement(len(train), t.pose_lr, centres=train.cameras.c2w[:, :3, 3], focal=focal,
                          pose=t.refine_poses)


#: what the trainer and evaluation call on a renderer (``update(step, chain, *, every, warmup)`` is optional)
RENDERER_METHODS = ("render_rays", "render_image")


def check_renderer(renderer: Any) -> None:
    """PluginError naming the renderer when it lacks one of :data:`RENDERER_METHODS`."""
    missing = [m for m in RENDERER_METHODS if not callable(getattr(renderer, m, None))]
    if missing:
        raise PluginError(f"{component_label(renderer)} has no {' or '.join(missing)}(); a renderer provides "
                          f"render_rays(origins, dirs, chain, *, training, background) and "
                          f"render_image(cameras, i, chain, *, chunk, supersample=1) (see `nls plugins --hook "
                          f"nls_register_renderers`)")

