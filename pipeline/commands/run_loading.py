"""Loading a run folder for the commands that work on one: :class:`Loaded` and :func:`open_run`, with a
moved data root rebased, and warnings or hints about data and plugins that changed since the run was made;
also the plugin host every command uses (``host_for``)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline import notices
from pipeline.types import NLSError


def host_for(args):
    """The plugin host of a command: ``args.host`` when given (main builds it once, before parsing),
    else one loading the built-ins, installed plugins and ``args.plugins_dir``."""
    if getattr(args, "host", None) is not None:
        return args.host
    from pipeline.plugins import PluginHost

    return PluginHost.create(plugins_dirs=[Path(d) for d in (getattr(args, "plugins_dir", None) or [])])


@dataclass
class Loaded:
    """A run as the commands use it: plugin host, config, run folder, device, scene, model, step and
    checkpoint state (None when no checkpoint was loaded)."""

    host: Any
    cfg: Any
    run: Any
    device: Any
    scene: Any
    system: Any
    step: int
    state: Optional[dict]


def open_run(args, *, need_checkpoint: bool = True, overrides: list[str] = (), train: bool = False) -> Loaded:
    """Rebuild a run from its folder: resolved config (with ``overrides``), scene, model and newest
    checkpoint. The losses are built only to ``train`` on (render, export, eval and the viewers use
    the model alone, and some losses take seconds to set up, e.g. hkr's labels)."""
    from pipeline.config import load_resolved, with_defaults
    from pipeline.runs import RunDir

    run = RunDir.open(Path(args.run_dir))
    host = host_for(args)
    kept = run.kept_scene_overrides()  # what the scene source gave the run to keep, given back to it
    try:
        cfg = load_resolved(run.config_path, host, [*overrides, *kept])
    except NLSError as exc:
        raise NLSError(f"{exc}{_missing_plugins_hint(run, host)}") from None
    recorded = run.read_json("scene.json") or {}  # what the scene source loaded when the run was made
    rebased = _rebased_scene_path(cfg, recorded)
    if rebased is not None:  # the run came from a machine whose data root is elsewhere
        cfg = load_resolved(run.config_path, host, [*overrides, *kept, f"scene.path={json.dumps(rebased)}"])
    # torch comes in only now: a typo in --set is refused in a fraction of a second
    from pipeline.build import build_system, load_scene_for_command, pick_device, setup_threads
    from pipeline.distributed import rank_device
    from pipeline.train import config_changes, load_error

    setup_threads(cfg.train.threads)
    device = rank_device(pick_device(getattr(args, "device", None) or cfg.train.device))
    state = run.load_checkpoint() if need_checkpoint else None
    scene = load_scene_for_command(cfg, device, overrides,  # an error names the --set that caused it
                                   quiet=getattr(args, "quiet", False))
    _warn_if_ground_truth_changed(run, scene, recorded)
    _check_cameras_frame(run, scene, recorded)
    system = build_system(cfg, scene, device, losses=train)
    if state is not None:
        model = state["model"] if train else system.held(state["model"])
        try:
            system.load_state_dict(model)
        except RuntimeError as exc:
            changed = config_changes(with_defaults(state.get("config"), host), cfg.to_dict())
            raise NLSError(f"checkpoint of {run.path} does not match its config.yaml: "
                           f"{load_error(exc).rstrip('.')}" + (f". {changed}" if changed else "")) from None
    if not train:  # render, export, eval: the training views through the refined poses (train.refine_poses)
        from pipeline.pose_refinement import refined_scene

        scene = refined_scene(scene, system)
    step = int(state["step"]) if state else 0
    pid = None if train else run.trainer_pid()
    if pid is not None:  # render/export/eval of a run in training: say which state they see
        print(f"note: {run.path} is being trained (pid {pid}); this uses its newest checkpoint, step {step} "
              f"of {cfg.train.steps}", file=sys.stderr)
    return Loaded(host, cfg, run, device, scene, system, step, state)


def _rebased_scene_path(cfg, recorded: dict) -> Optional[str]:
    """A run's ``scene.path`` moved to this machine's data root: config.yaml holds the path the run was
    made with (``${NLS_DATA}`` expanded); when it is missing here but lies under the data root recorded in
    scene.json (``recorded``), the same path under today's data root (when it exists; a warning says so),
    else None."""
    from pipeline.scenes import data_root

    path = getattr(getattr(cfg.stages["scene"], "options", None), "path", None)
    then, now = recorded.get("data_root"), data_root()
    if not isinstance(path, str) or not isinstance(then, str) or now is None or Path(path).exists():
        return None
    try:
        moved = now / Path(path).relative_to(then)
    except ValueError:  # not under the old data root
        return None
    if not moved.exists():
        return None
    notices.warn(f"scene.path {path} is missing here; it lies under the data root the run was made with ({then}), "
                 f"so the same path under this data root is used: {moved}")
    return str(moved)


def _warn_if_ground_truth_changed(run, scene, recorded: dict) -> None:
    """The scene's ground-truth mesh is not the one the run recorded (scene.json ``gt_mesh_sha256``, in
    ``recorded``): the data changed since the run was made, and metrics against it no longer measure what
    it trained on."""
    from pipeline.runs import file_sha256

    digest = recorded.get("gt_mesh_sha256")
    if isinstance(digest, str) and scene.gt_mesh and file_sha256(scene.gt_mesh) != digest:
        notices.warn(f"the ground-truth mesh {scene.gt_mesh} is not the one {run.path} was made with (its "
                     f"sha256 differs from scene.json's): the scene's data changed since, so geometry metrics "
                     f"now measure against other data; restore it, or make a new run")


def _check_cameras_frame(run, scene, recorded: dict) -> None:
    """NLSError when a posed-image scene is normalised otherwise than the run recorded (scene.json
    ``input_frame.to_run``): its cameras are not the ones the field was trained with, so every render, mesh and
    metric would be wrong. A COLMAP model changed since, or (``photos``) structure from motion ran again, its
    cache having gone, and found other poses: SfM does not repeat itself exactly from run to run."""
    import numpy as np

    then = (recorded.get("input_frame") or {}).get("to_run") if isinstance(recorded.get("input_frame"), dict) else None
    now = (scene.meta.get("input_frame") or {}).get("to_run")
    if not scene.splits or then is None or now is None:
        return
    then, now = np.asarray(then, dtype=np.float64), np.asarray(now, dtype=np.float64)
    if then.shape == now.shape and np.allclose(then, now, rtol=1e-6, atol=1e-9):
        return
    if isinstance(recorded.get("sfm"), dict):
        why = (f"structure from motion ran again on the photos (the cached result the run was made with, "
               f"{recorded['sfm'].get('capture')}, was removed or changed, and the run has no kept/model to "
               f"rebuild it from) and found other poses; SfM does not repeat itself exactly. Put that cache folder "
               f"back, or make a new run")
    else:
        why = (f"the camera model at {recorded.get('input_frame', {}).get('file')} changed since the run was made. "
               f"Restore it, or make a new run")
    raise NLSError(f"the scene's cameras are not the ones {run.path} was trained with (its normalisation differs "
                   f"from scene.json's input_frame): {why}")


def _missing_plugins_hint(run, host) -> str:
    """' The run was made with plugin(s) ... that are not loaded now: ...' from its plugins.json,
    or '' when every plugin it recorded is loaded."""
    recorded = (run.read_json("plugins.json") or {}).get("plugins") or []
    loaded = {p.name for p in host.plugins()}
    how = []
    for p in recorded:
        if not isinstance(p, dict) or p.get("name") in loaded:
            continue
        src = str(p.get("source", ""))
        if src.startswith("entry point of "):
            how.append(f"{p['name']} ({src}, version {p.get('version', '?')}): install it, or check NLS_LOAD_PLUGINS")
        elif src not in ("builtin", "registered in-process"):
            how.append(f"{p['name']} (from {src}): pass --plugins-dir {Path(src).parent}")
    return f" The run was made with plugin(s) that are not loaded now: {'; '.join(how)}." if how else ""
