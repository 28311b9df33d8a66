"""The training loop for posed-image scenes: random ray batches, every enabled loss, atomic
checkpoints, resume to the same step budget, Ctrl-C saves and exits cleanly."""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from pipeline.config import SceneConfig
from pipeline import notices
from pipeline.pose_refinement import pose_record
from pipeline.runs import EXPOSURE_RECORD, POSES_RECORD, WARNINGS_RECORD, RunDir
from pipeline.system import check_render_output
from pipeline.types import NLSError, PluginError, SceneData, component_label, plugin_errors


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the step reached, the seconds the call took, whether a stop
    request ended it, and whether the state at ``step`` is in a checkpoint."""

    step: int
    seconds: float
    interrupted: bool = False
    saved: bool = True


class RaySampler:
    """Uniform random pixels over all training images (over the pixels that count, ``split.valid``, when it has
    ignore masks). Deterministic given its generator state.

    ``sample(n) -> dict(origins (n,3), dirs (n,3), rgb (n,3), image_index (n,) long, alpha (n,1) | None)``,
    ``image_index`` the training image of each ray; with depth maps (``split.depths``) also ``depth`` (n, 1), the
    measured distance along each ray (0: none), and with keypoint depths' errors (``split.depth_errors``)
    ``depth_uncertainty`` (n, 1) (:func:`uncertainty`). Rays go through the pixel centres, or with ``jitter`` through
    a uniform random point of each pixel (area sampling, so that a pixel's expected colour is the footprint
    average an anti-aliased image holds).
    """

    def __init__(self, scene: SceneData, device: torch.device, seed: int, jitter: bool = False):
        from pipeline.rays import pixel_rays

        self._pixel_rays = pixel_rays
        split = scene.splits.get("train")
        if split is None or len(split) == 0:
            raise NLSError("the scene has no training images (split 'train' is empty)")
        self.split = split
        self.cameras = split.cameras.to(device)
        self.images = split.images.to(device)
        self.alphas = split.alphas.to(device) if split.alphas is not None else None
        self.valid = split.valid  # (N, H, W) bool on the CPU, beside the generator (None: every pixel)
        self.depths = split.depths.to(device) if split.depths is not None else None
        #: (N, H, W) each keypoint depth's uncertainty relative to the split's typical one (:func:`uncertainty`)
        self.uncertainty = uncertainty(split).to(device) if split.depth_errors is not None else None
        self.kept = None if self.valid is None else float(self.valid.float().mean())
        if self.kept == 0.0:
            raise NLSError("the ignore masks of the training images leave no pixel to train on")
        self._measured = None  # (the pixels with a depth that count, and their share: made on the first call)
        self.device = device
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.jitter = jitter

    def _pixels(self, n: int, keep: Optional[torch.Tensor] = None,
                share: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image, row, column)`` (n,) long each, uniform over the pixels ``keep`` (N, H, W) bool holds (None:
        every pixel), a ``share`` of them all, by rejection: draws of about ``n / share`` pixels until ``n`` are
        kept."""
        N, H, W, _ = self.images.shape
        if keep is None:
            return (torch.randint(0, N, (n,), generator=self.gen), torch.randint(0, H, (n,), generator=self.gen),
                    torch.randint(0, W, (n,), generator=self.gen))
        found, have = [], 0
        while have < n:
            m = int(1.1 * (n - have) / share) + 64
            idx, v, u = (torch.randint(0, k, (m,), generator=self.gen) for k in (N, H, W))
            kept = keep[idx, v, u]
            found.append((idx[kept], v[kept], u[kept]))
            have += int(kept.sum())
        return tuple(torch.cat(part)[:n] for part in zip(*found))

    def sample(self, n: int, measured: bool = False) -> dict:
        """``n`` rays through uniform random pixels of the training images (that count: ``split.valid``):
        ``origins``, ``dirs``, ``rgb`` ``(n, 3)`` and ``alpha`` (None when the split has no alphas); with
        ``measured``, only through pixels with a measured depth (``train.depth_rays``)."""
        if measured:
            if self._measured is None:
                given = self.depths.cpu() > 0 if self.valid is None else (self.depths.cpu() > 0) & self.valid
                if not bool(given.any()):
                    raise NLSError("train.depth_rays: no pixel of the training images that counts has a depth")
                self._measured = (given, float(given.float().mean()))
            picked = self._pixels(n, *self._measured)
        else:
            picked = self._pixels(n, self.valid, self.kept)
        idx, v, u = (t.to(self.device) for t in picked)
        if self.jitter:
            du, dv = torch.rand(2, n, generator=self.gen).to(self.device)
        else:
            du = dv = 0.5
        o, d = self._pixel_rays(self.cameras, idx, u.float() + du, v.float() + dv)
        batch = {"origins": o, "dirs": d, "rgb": self.images[idx, v, u], "image_index": idx}
        batch["alpha"] = self.alphas[idx, v, u] if self.alphas is not None else None
        if self.depths is not None:
            batch["depth"] = ray_distance(self.depths[idx, v, u], d, self.cameras.c2w[idx])
        if self.uncertainty is not None:
            batch["depth_uncertainty"] = self.uncertainty[idx, v, u][:, None]
        return batch


#: the range a keypoint depth's relative uncertainty is held to (:func:`uncertainty`)
UNCERTAINTY_RANGE = (0.25, 4.0)


def uncertainty(split) -> torch.Tensor:
    """(N, H, W) float32: each keypoint depth's reprojection error (``split.depth_errors``) over the mean of the
    split's, held to :data:`UNCERTAINTY_RANGE` (so one wild point cannot make the others certain), 1 where there
    is no depth. DS-NeRF takes a keypoint's reprojection error as its uncertainty; the losses scale by this
    ratio (the depth loss: ``plugins.ngp.losses.DepthLoss``)."""
    errors = split.depth_errors
    given = (errors > 0) & (split.depths > 0)
    if not bool(given.any()):
        return torch.ones_like(errors)
    ratio = (errors / errors[given].mean()).clamp(*UNCERTAINTY_RANGE)
    return torch.where(given, ratio, torch.ones_like(ratio))


def ray_distance(z: torch.Tensor, dirs: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """``(n, 1)`` distance along the unit rays ``dirs`` (n, 3) of cameras ``c2w`` (n, 4, 4; OpenGL axes, looking
    down -z) to the points at z-depth ``z`` (n,) along each camera's optical axis: ``z / cos`` of the ray's angle
    to the axis; 0 stays 0 (no depth)."""
    cos = -(dirs * c2w[:, :3, 2]).sum(-1)
    return (z / cos.clamp_min(1e-6))[:, None]


class DatasetBatches:
    """Endless mini-batches from a map-style dataset, resumable at any step.

    Each epoch is one seeded permutation of the whole dataset (``DistributedSampler`` with
    ``seed`` and ``set_epoch``), so the global order depends only on the seed: a run resumed
    with another process count continues the same sequence. ``next() -> dict`` of stacked
    tensors with leading dimension ``batch_items // world_size`` (this process's share);
    items are dicts of tensors and are collated with torch's default collate. The last
    incomplete batch of an epoch is dropped.
    """

    def __init__(self, dataset, batch_items: int, seed: int, device: torch.device,
                 world_size: int = 1, rank: int = 0):
        if len(dataset) < batch_items:
            raise NLSError(f"train.batch_items={batch_items} is larger than the training set "
                           f"({len(dataset)} items); lower train.batch_items")
        if batch_items % world_size:
            raise NLSError(f"train.batch_items={batch_items} must be divisible by the number of "
                           f"processes ({world_size})")
        self.dataset, self.batch_items, self.seed, self.device = dataset, batch_items, seed, device
        self.world_size, self.rank = world_size, rank
        self.per_epoch = len(dataset) // batch_items
        self.epoch, self.index = 0, 0  # index: batches already drawn in this epoch
        self._order: Optional[list[int]] = None

    def _epoch_order(self) -> list[int]:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(self.dataset, num_replicas=1, rank=0, shuffle=True, seed=self.seed)
        sampler.set_epoch(self.epoch)
        return list(sampler)

    def next(self) -> dict:
        """This rank's share of the next batch, collated and moved to ``device``; a used-up epoch
        moves on to the next one."""
        from torch.utils.data import default_collate

        if self.index >= self.per_epoch:
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        start = self.index * self.batch_items
        share = self.batch_items // self.world_size
        ids = self._order[start + self.rank * share: start + (self.rank + 1) * share]
        self.index += 1
        batch = default_collate([self.dataset[i] for i in ids])
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def state(self) -> dict:
        """``{"epoch", "index"}``: where the batch sequence stands."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, st: dict) -> None:
        """Continue the sequence at a :meth:`state`; the epoch's order is recomputed from the seed."""
        self.epoch, self.index, self._order = int(st["epoch"]), int(st["index"]), None


def rng_state() -> dict:
    """The global torch, Python and numpy RNG states (and the current CUDA device's when CUDA is
    available) as a dict of tensors and plain values.

    Only the current device's CUDA generator is kept: every process trains on its own device and
    every rank draws the same numbers (same seed), so rank 0's generator is every rank's. Saving all
    visible devices' generators (as before) restored rank r's from a copy rank 0 never advanced, and
    failed on a machine with fewer GPUs."""
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    ns = np.random.get_state()
    st["numpy"] = {"key": torch.from_numpy(ns[1].astype(np.int64)), "pos": int(ns[2]),
                   "has_gauss": int(ns[3]), "gauss": float(ns[4])}
    if torch.cuda.is_available():
        st["cuda_current"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    """Restore the global RNGs from a :func:`rng_state` dict; its CUDA state goes to the current device
    (an older checkpoint's per-device list gives the entry of the current device's index, when it has
    one)."""
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if not torch.cuda.is_available():
        return
    cuda = st.get("cuda_current")
    if cuda is None and st.get("cuda"):  # checkpoints before the change: one state per visible device
        index = torch.cuda.current_device()
        cuda = st["cuda"][index] if index < len(st["cuda"]) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def config_diff(saved: object, now: dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``[(key, saved value, value now)]`` for the flattened keys that differ between ``saved`` (a
    checkpoint's ``config``) and ``now``, leaving out ``ignore``; [] when ``saved`` is absent."""
    from pipeline.report.collect import flatten_dict

    if not isinstance(saved, dict):
        return []
    old, new = flatten_dict(saved), flatten_dict(now)
    return [(k, old.get(k, "unset"), new.get(k, "unset")) for k in dict.fromkeys([*old, *new])
            if old.get(k) != new.get(k) and k not in ignore]


def describe_diff(diff: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    """'field.resolution (32 -> 48), ...' for at most ``limit`` entries of :func:`config_diff`."""
    shown = ", ".join(f"{k} ({a} -> {b})" for k, a, b in diff[:limit])
    return shown + (f" and {len(diff) - limit} more" if len(diff) > limit else "")


def config_changes(saved: object, now: dict, limit: int = 6) -> str:
    """'config.yaml differs from the config the checkpoint was trained with: field.resolution (32 -> 48)'
    (at most ``limit`` keys), or '' when ``saved`` (a checkpoint's ``config``) is absent or the same.
    ``train.steps`` is left out: it never stops a checkpoint from loading."""
    diff = config_diff(saved, now, ignore=("train.steps",))
    if not diff:
        return ""
    return (f"config.yaml differs from the config the checkpoint was trained with: {describe_diff(diff, limit)}; "
            f"restore those values, or train a new run with them")


def load_error(exc: BaseException, limit: int = 400) -> str:
    """torch's ``load_state_dict`` error in one line: its headline and the first detail (missing, unexpected
    or mis-shaped keys), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_buffer_sync_kwargs() -> dict:
    """DDP keyword that turns off the per-forward buffer broadcast: ``forward_sync_buffers=False`` from
    torch 2.13 (where ``broadcast_buffers`` is deprecated), ``broadcast_buffers=False`` before."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's (``seed mod 2**32``) and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step, which then writes a checkpoint;
    a second Ctrl-C stops at once (no checkpoint: the step may be half done).

    Deferring the stop to a step boundary keeps the saved state consistent, and lets the ranks of
    a distributed run agree on the step they stop at (the flag is all-reduced with the metrics).
    Inside :meth:`shielded` (a checkpoint being written) a second Ctrl-C waits for the block to end.
    """

    def __init__(self) -> None:
        self.requested = False
        self._shield = False
        self._forced = False

    def _handler(self, signum, frame) -> None:
        # only a second Ctrl-C forces: torchrun answers a Ctrl-C with SIGTERM to its workers, and
        # those must still reach the step boundary and save
        if self.requested and signum == signal.SIGINT:
            if self._shield:  # never half a checkpoint: the stop is taken when the save is done
                self._forced = True
                return
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def shielded(self, *, then_stop: bool = True):
        """A block a forced stop must not cut (writing a checkpoint): a second Ctrl-C inside it is
        held and, with ``then_stop``, raised as KeyboardInterrupt when the block has finished."""
        self._shield, self._forced = True, False
        try:
            yield
        finally:
            self._shield = False
        if self._forced and then_stop:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        """Context manager: this request handles SIGINT and SIGTERM inside it (main thread only);
        the previous handlers are restored on exit."""
        from pipeline.signals import handlers_installed

        with handlers_installed({signal.SIGINT: self._handler, signal.SIGTERM: self._handler}):
            yield self


class TrainStep(nn.Module):
    """The training objective as one module call, so ``DistributedDataParallel`` sees every use of
    every parameter (DDP syncs gradients only for work done inside its ``forward``).

    ``forward(batch, background) -> (terms {name: scalar}, out)``: with ray ``origins``/``dirs`` in
    ``batch`` the rays are rendered first (``out`` = renderer outputs), otherwise ``out`` is empty.
    """

    def __init__(self, system: nn.Module):
        super().__init__()
        self.system = system

    def forward(self, batch: dict, background: Optional[torch.Tensor] = None) -> tuple[dict, dict]:
        """Render ``batch``'s rays when it has ``origins`` and there is a renderer, then evaluate
        every loss: ``({name: scalar}, out)``."""
        system = self.system
        out: dict = {}
        if "origins" in batch and system.renderer is not None:
            what = (f"rendering {len(batch['origins'])} training rays ({component_label(system.renderer)} on "
                    f"{component_label(system.chain.field)}) failed")
            origins, dirs = batch["origins"], batch["dirs"]
            if getattr(system, "poses", None) is not None and "image_index" in batch:  # from the refined cameras
                origins, dirs = system.poses(origins, dirs, batch["image_index"])
                if batch.get("depth") is not None:  # (the measured z-depths along the refined rays)
                    batch = {**batch, "depth": system.poses.ray_distances(batch["depth"], batch["dirs"],
                                                                          batch["image_index"])}
            with plugin_errors(what), _out_of_memory_hint(len(origins)):
                out = system.renderer.render_rays(origins, dirs, system.chain, training=True, background=background)
            check_render_output(out, system.renderer, "render_rays", (len(batch["origins"]),))
            if getattr(system, "exposure", None) is not None and "image_index" in batch:  # as each shot's camera saw it
                bg = background if background is not None else getattr(system.renderer, "background", None)
                out = {**out, "rgb": system.exposure(out["rgb"], out.get("opacity"), batch["image_index"], bg)}
        terms = {name: _loss_term(name, loss, batch, out, system) for name, loss in system.losses.items()}
        return terms, out


@contextmanager
def _out_of_memory_hint(rays: int):
    """Device out-of-memory during a training step as NLSError with what to lower (not a plugin's fault)."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    try:
        yield
    except oom as exc:
        raise NLSError(f"out of device memory while training on {rays} rays ({str(exc).splitlines()[0][:200]}); "
                       f"lower train.batch_rays or renderer.samples_per_ray") from None


def _loss_term(name: str, loss, batch: dict, out: dict, system) -> torch.Tensor:
    """One loss term, checked to be a scalar tensor; an exception of the loss's own becomes a
    :class:`PluginError` naming it (``NLS_TRACE_PLUGINS=1`` keeps the traceback)."""
    who = f"{component_label(loss)} (term {name})"
    with plugin_errors(f"{who} failed"):
        value = loss(batch, out, system)
    if not torch.is_tensor(value) or value.numel() != 1:
        got = f"shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise PluginError(f"{who} returned {got}; a loss returns one scalar tensor (reduce it, e.g. with .mean())")
    return value.reshape(())


def no_gradient_message(terms: dict, losses: nn.ModuleDict, step: int) -> str:
    """Why a step cannot train: none of its loss ``terms`` depends on a trainable parameter (each
    term named with its component), and what a loss must return instead."""
    names = ", ".join(f"{name} ({component_label(losses[name])})" for name in terms)
    return (f"no loss term of step {step} has a gradient ({names}), so nothing can train: a loss returns a "
            f"tensor computed from the model's outputs (out, or system.chain), not a constant or a detached value")


def window_fraction(fraction: float, windows: Optional[list] = None) -> float:
    """Progress in ``[0, 1]`` through the last of ``windows`` (``[[start, end], ...]`` budget
    fractions) that has started by ``fraction``; ``fraction`` itself without windows."""
    if not windows:
        return fraction
    started = [w for w in windows if w[0] <= fraction] or [windows[0]]
    start, end = started[-1]
    return min(1.0, max(0.0, (fraction - start) / max(end - start, 1e-12)))


class Trainer:
    """Owns the optimiser, schedule and sampler of one run; ``fit()`` trains to ``cfg.train.steps``.

    Staged schedules: any module of the system that defines ``on_train_step(step: int)`` is called
    before every step (also the first step after a resume), so it can switch phases or toggle
    ``requires_grad``; a module that also defines ``on_train_progress(fraction: float)`` is told,
    just before, the fraction of the budget used so far (steps, or training seconds when
    ``train.max_seconds`` is set: the same fraction the learning-rate decay follows), so phases
    can be placed in wall-clock budgets. Compiled kernels are made ready before the clock starts: every
    module that defines ``prepare_kernels(device)`` is called once at construction (nerfacc's CUDA
    extension, the C++ CPU kernels), so a first-use JIT build is never timed as training.
    The optimiser holds every parameter that required grad at construction; Adam skips parameters whose
    grad is None, so a frozen part keeps its state untouched. A module whose behaviour depends on the
    phase should keep the phase in a buffer so checkpoints restore it.

    Several processes (``torchrun``, see :mod:`pipeline.distributed`): the objective runs inside
    ``DistributedDataParallel`` (gradients averaged over ranks); each rank takes its slice of the
    same global batch (``train.batch_items`` dataset items or ``train.batch_rays`` rays, drawn in
    the same order as one process would), so with losses that are means over the batch the
    averaged gradient equals the single-process one. Loss terms, the stop flag and the elapsed time
    are all-reduced every step, so every rank logs, decays the learning rate and stops alike; only
    rank 0 writes ``metrics.jsonl`` and checkpoints. A checkpoint holds no rank-specific state, so
    a run resumes with any number of processes (the global batch order continues unchanged).
    BatchNorm layers become ``SyncBatchNorm`` on CUDA; on CPU torch has no SyncBatchNorm, so they
    normalise over each rank's share (a warning says so; group norm gives identical results).
    """

    def __init__(self, cfg: SceneConfig, system, scene: SceneData, run: RunDir, device: torch.device,
                 *, progress: bool = True):
        from pipeline import distributed

        self.cfg, self.system, self.scene, self.run, self.device = cfg, system, scene, run, device
        self.dist = distributed.current()
        t = cfg.train
        self.optimizer = torch.optim.Adam(system.param_groups(t.lr), lr=t.lr, weight_decay=t.weight_decay,
                                          betas=(0.9, 0.99), eps=1e-15, **({"fused": True} if t.fused_adam else {}))
        for g in self.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        has_images = system.renderer is not None and "train" in scene.splits
        self.sampler = RaySampler(scene, device, t.seed, t.pixel_jitter) if has_images else None
        for key in ("batch_rays", "depth_rays"):
            if self.sampler is not None and getattr(t, key) % self.dist.world_size:
                raise NLSError(f"train.{key}={getattr(t, key)} must be divisible by the number of processes "
                               f"({self.dist.world_size})")
        if t.depth_rays and (self.sampler is None or self.sampler.depths is None):
            raise NLSError(f"train.depth_rays={t.depth_rays} draws rays through the pixels with a measured depth, and "
                           f"this scene's training images have no depth: set scene.sparse_depth: true (a COLMAP "
                           f"capture, photos, a video), give depth maps, or set train.depth_rays: 0")
        train_set = scene.datasets.get("train")
        self.items = (DatasetBatches(train_set, t.batch_items, t.seed, device, self.dist.world_size,
                                     self.dist.rank)
                      if self.sampler is None and train_set is not None else None)
        for module in system.modules():  # JIT builds before the clock (see the class docstring)
            if callable(getattr(module, "prepare_kernels", None)):
                with plugin_errors(f"{component_label(module)}: prepare_kernels({device}) failed"):
                    module.prepare_kernels(device)
        self.step = 0
        self.progress = progress and self.dist.is_main
        #: modules with ``on_train_step(step)``: staged schedules (freeze/unfreeze parts, switch phases)
        self._step_hooks = [m for m in system.modules() if callable(getattr(m, "on_train_step", None))]
        self._progress_hooks = [m for m in system.modules() if callable(getattr(m, "on_train_progress", None))]
        self.elapsed = 0.0  # training seconds over all sessions of the run (mean over ranks)
        self._clock = 0.0  # this process's own count of the same; the mean of these is ``elapsed``
        self.stop = StopRequest()
        self._stop_agreed = False
        self._launcher = distributed.LauncherWatch()  # a killed torchrun launcher stops the run as SIGTERM does
        self.objective = self._wrap(TrainStep(system))
        from pipeline.validation import build_validators, check_validation

        check_validation(cfg, scene, system)  # on every rank, so all refuse alike
        #: render held-out views and/or mesh the field every ``train.val_every`` steps (rank 0 only; see
        #: :mod:`pipeline.validation`)
        self.validators = build_validators(cfg, scene, system, run.renders_dir, device) if self.dist.is_main else []
        if t.tensorboard:
            from pipeline.tensorboard_log import check_tensorboard

            check_tensorboard(f"{cfg.source}: train.tensorboard = true")
        if t.wandb:
            from pipeline.wandb_log import check_wandb

            check_wandb(f"{cfg.source}: train.wandb = true")
        #: the views of metrics.jsonl this session writes to (rank 0): TensorBoard events (``train.tensorboard``),
        #: a W&B run (``train.wandb``); each has ``scalars(record)``, ``image(tag, image, step)`` and ``close()``,
        #: and is opened by :meth:`fit`
        self.loggers: list = []

    def _wrap(self, step_module: TrainStep) -> nn.Module:
        """DDP around the objective when several processes train; the module itself otherwise."""
        if not self.dist.enabled:
            return step_module
        from torch.nn.parallel import DistributedDataParallel

        from pipeline import distributed

        if not any(p.requires_grad for p in step_module.parameters()):
            raise NLSError("the model has no trainable parameters, so there is nothing to train in parallel")
        ids = [self.device.index] if self.device.type == "cuda" else None
        norms = [m for m in step_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms and self.device.type == "cuda":
            # batch statistics over the global batch, as one process would compute them
            step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        elif norms and self.dist.is_main:
            notices.warn(f"the model has {len(norms)} BatchNorm layer(s); on CPU (gloo) torch has no "
                 f"SyncBatchNorm, so each process normalises over its own share (1/{self.dist.world_size}) of the batch "
                 f"and results differ from one process. Use group/instance norm for identical results.")
        with distributed.collective("broadcasting rank 0's initial parameters"):
            # find_unused_parameters: staged schedules and optional loss terms may leave parameters
            # out of a step. Its graph walk costs nothing measurable: csg_dense, 2 gloo processes on
            # 2 cores, 300 steps took 43.8 s with it and 45.0 / 45.2 s without.
            # forward_sync_buffers=False: buffers are broadcast from rank 0 once, here, and then
            # evolve identically on every rank (same seed, same random draws)
            return DistributedDataParallel(step_module, device_ids=ids, find_unused_parameters=True,
                                           **_no_buffer_sync_kwargs())

    # -- checkpoint state ------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint dict: step, model, optimiser, RNG states, sampler and dataset positions,
        elapsed seconds and world size."""
        return {"step": self.step, "model": self.system.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(),
                "sampler": self.sampler.gen.get_state() if self.sampler else None,
                "items": self.items.state() if self.items else None, "elapsed": self.elapsed,
                "world_size": self.dist.world_size, "config": self.cfg.to_dict(),
                "threads": torch.get_num_threads(), "warnings": notices.kept()}

    def load_state(self, st: dict) -> None:
        """Restore a :meth:`state` dict; a model or optimiser that does not match raises NLSError."""
        try:
            self.system.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            changed = config_changes(st.get("config"), self.cfg.to_dict())
            raise NLSError(f"the checkpoint does not match this run's model/config ({type(exc).__name__}: "
                           f"{load_error(exc)}). " + (changed or "Was config.yaml edited after the run started?")
                           ) from None
        for w in st.get("warnings") or []:  # the run's warnings so far, for its summary.json
            notices.keep(str(w))
        if isinstance(st.get("rng"), dict):
            try:
                set_rng_state(st["rng"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise NLSError(f"the checkpoint's random-number state is damaged ({type(exc).__name__}: {exc}); "
                               f"it cannot be resumed exactly") from None
        else:
            raise NLSError("the checkpoint has no random-number state ('rng'); it cannot be resumed exactly")
        if self.sampler is not None and st.get("sampler") is not None:
            self.sampler.gen.set_state(st["sampler"])
        if self.items is not None and st.get("items") is not None:
            self.items.load_state(st["items"])
        self.step = int(st["step"])
        self.elapsed = self._clock = float(st.get("elapsed", 0.0))

    def save(self) -> None:
        """Rank 0 writes the checkpoint (every rank holds the same state). Parameters that are no longer
        finite raise NLSError first, on every rank, so the last good checkpoint is never replaced or
        pruned by a damaged one (the loss check cannot see a NaN gradient behind a finite loss)."""
        bad = [name for name, p in self.system.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            ck = self.run.latest_checkpoint()
            raise NLSError(f"training diverged before step {self.step}: parameter(s) {', '.join(bad[:4])}"
                           f"{' ...' if len(bad) > 4 else ''} hold NaN or inf, so no checkpoint was written"
                           f"{f' ({ck.name} is the newest good one)' if ck else ''}. Lower train.lr or check the "
                           f"loss terms for a NaN gradient.")
        if self.dist.is_main:
            self.run.save_checkpoint(self.state(), self.step)
            if getattr(self.system, "exposure", None) is not None:
                train = self.scene.splits["train"]
                self.run.write_json(EXPOSURE_RECORD, {"step": self.step, **self.system.exposure.summary(train.names)})
            if getattr(self.system, "poses", None) is not None:
                self.run.write_json(POSES_RECORD, pose_record(self.system.poses, self.scene.splits["train"], self.step))
            if notices.kept():  # readable without torch, for compare and report before summary.json exists
                self.run.write_json(WARNINGS_RECORD, {"step": self.step, "warnings": notices.kept()})

    def log(self, record: dict) -> None:
        """Append ``record`` to ``metrics.jsonl`` (rank 0 only), and to the :attr:`loggers` that are on."""
        if self.dist.is_main:
            self.run.log_metrics(record)
            for logger in self.loggers:
                logger.scalars(record)

    def budget_fraction(self) -> float:
        """Fraction of the budget used: steps, or training seconds when ``max_seconds`` is set."""
        t = self.cfg.train
        p = self.step / max(1, t.steps)
        if t.max_seconds:
            p = max(p, self.elapsed / t.max_seconds)
        return min(1.0, p)

    def _set_lr(self) -> None:
        """Exponential decay from ``lr`` to ``lr * lr_final_factor`` over the budget (steps or time).

        A parameter group may carry ``decay_windows``: ``[[start, end], ...]`` budget fractions
        (staged schedules: one window per phase the group trains in); the group then decays over
        the last window that has started, from its full rate at ``start`` to the final one at ``end``.
        """
        frac = self.budget_fraction()
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * self.cfg.train.lr_final_factor ** window_fraction(frac, g.get("decay_windows"))

    # -- one step -----------------------------------------------------------------------
    def _ray_batch(self) -> tuple[dict, Optional[torch.Tensor]]:
        """Posed-image scenes: this rank's slice of the global random ray batch (+ random background)."""
        t, system = self.cfg.train, self.system
        renderer = system.renderer
        if hasattr(renderer, "update"):  # optional: renderers with an occupancy grid or other state
            with plugin_errors(f"{component_label(renderer)} failed in update(step={self.step})"):
                renderer.update(self.step, system.chain, every=t.grid_update_every, warmup=t.grid_warmup)
        batch = self._rank_share(self.sampler.sample(t.batch_rays), t.batch_rays)
        if t.depth_rays:  # (DS-NeRF's extra rays through the pixels with a measured depth, after the others)
            extra = self._rank_share(self.sampler.sample(t.depth_rays, measured=True), t.depth_rays)
            batch = {k: torch.cat([v, extra[k]]) if torch.is_tensor(v) else v for k, v in batch.items()}
        bg = None
        if getattr(getattr(renderer, "cfg", None), "random_background", False) and batch["alpha"] is not None:
            # drawn for the whole global batch and sliced like the rays: every rank holds the same
            # generator, so a per-rank draw would give each rank's rays the same colours
            bg = torch.rand(t.batch_rays, 3, device=self.device)[self._rank_part(t.batch_rays)]
            if t.depth_rays:
                bg = torch.cat([bg, torch.rand(t.depth_rays, 3, device=self.device)[self._rank_part(t.depth_rays)]])
            a = batch["alpha"]
            batch["rgb"] = (batch["rgb"] - (1 - a) * renderer.background) + (1 - a) * bg
        return batch, bg

    def _rank_part(self, total: int) -> slice:
        """This rank's slice of a global batch of ``total`` rays (all of it in a single process)."""
        if not self.dist.enabled:
            return slice(None)
        share = total // self.dist.world_size
        return slice(self.dist.rank * share, (self.dist.rank + 1) * share)

    def _rank_share(self, batch: dict, total: int) -> dict:
        """``batch``'s tensors sliced to this rank's part of the global ``total`` rays."""
        part = self._rank_part(total)
        return batch if part == slice(None) else {k: (v[part] if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self) -> dict:
        """One optimisation step. With a renderer and training images, losses see a rendered ray
        batch; with a training dataset (``scene.datasets["train"]``), ``batch`` is a collated
        mini-batch of this rank's share of ``train.batch_items`` items; otherwise (point-cloud /
        mesh methods) ``batch`` holds only the step and the loss terms sample their own points."""
        from pipeline import distributed

        s0 = time.perf_counter()
        self.system.train()
        if self._progress_hooks:
            fraction = self.budget_fraction()
            for module in self._progress_hooks:
                with plugin_errors(f"{component_label(module)}: on_train_progress({fraction:.4g}) failed"):
                    module.on_train_progress(fraction)
        for module in self._step_hooks:
            with plugin_errors(f"{component_label(module)}: on_train_step({self.step}) failed"):
                module.on_train_step(self.step)
        bg = None
        if self.sampler is not None:
            batch, bg = self._ray_batch()
        elif self.items is not None:
            batch = self.items.next()
        else:
            batch = {}
        batch["step"] = self.step
        with distributed.collective("computing gradients", step=self.step, run_dir=self.run.path):
            terms, out = self.objective(batch, bg)
            if not terms:
                raise NLSError("the scene has no loss terms, so there is nothing to train; add `losses:`")
            total = sum(terms.values())
            if not total.requires_grad:
                raise PluginError(no_gradient_message(terms, self.system.losses, self.step))
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()  # under DDP: gradients averaged over ranks
        mse = None
        if "rgb" in out:
            with torch.no_grad():
                mse = float(torch.mean((out["rgb"] - batch["rgb"]) ** 2))
        # one collective per step: loss terms and mse (means over ranks), stop request, elapsed seconds
        local = [float(total.detach())] + [float(v.detach()) for v in terms.values()]
        local += [mse or 0.0, 1.0 if self.stop.requested or self._launcher_gone() else 0.0,
                  self._clock + time.perf_counter() - s0]
        stats = distributed.all_reduce_mean(torch.tensor(local, dtype=torch.float64), self.dist,
                                            what="averaging the step's metrics", step=self.step,
                                            run_dir=self.run.path).tolist()
        total_mean, term_means, mse, stop, elapsed = stats[0], stats[1:-3], stats[-3], stats[-2], stats[-1]
        if not math.isfinite(total_mean):
            bad = [k for k, v in zip(terms, term_means) if not math.isfinite(v)]
            if self.step == 0 and len(bad) < len(terms):  # before any update: the term itself is wrong
                raise PluginError(f"{', '.join(f'{k} ({component_label(self.system.losses[k])})' for k in bad)} "
                                  f"gave a non-finite loss at the first step, before any update, while the other "
                                  f"terms are finite: the loss computes it wrongly (NaN or inf from its inputs)")
            raise NLSError(f"training diverged at step {self.step}: loss is {total_mean} "
                           f"({', '.join(f'{k}={v:.4g}' for k, v in zip(terms, term_means))}). "
                           f"Lower train.lr or check the scene's box.")
        self.optimizer.step()
        self.step += 1
        self.elapsed = elapsed  # identical on every rank, so the lr schedule and time budget agree
        self._stop_agreed = stop > 0
        self._set_lr()
        rec = {"loss": total_mean, **{f"loss/{k}": v for k, v in zip(terms, term_means)}, **self._lrs()}
        if "rgb" in out:
            rec["psnr_train"] = -10 * math.log10(max(mse, 1e-10))
            if "num_samples" in out:  # optional renderer output: samples taken over the batch
                rec["samples_per_ray"] = out["num_samples"] / len(out["rgb"])
        focal = getattr(getattr(self.system, "poses", None), "focal", None)
        if focal is not None:  # train.refine_focal: the focal-length factor as it stands
            rec["focal_scale"] = float(focal.frame_scale().detach())  # (per camera: their mean, poses.json each)
        self._clock += time.perf_counter() - s0
        return rec

    def _launcher_gone(self) -> bool:
        """Whether the torchrun launcher died (:class:`~pipeline.distributed.LauncherWatch`); the first time,
        asks for a stop at this step's boundary, which writes a checkpoint, and the node's local rank 0 says so."""
        if self.stop.requested or not self._launcher.gone():
            return False
        from pipeline import distributed

        self.stop.requested = True
        if self.dist.local_rank != 0:  # every worker of the node sees the same launcher go: one says so
            return True
        print(f"{self.dist.tag()}the torchrun launcher (pid {self._launcher.pid}) is gone: stopping at step "
              f"{self.step + 1} with a checkpoint; {distributed.RESUME_HINT.format(run=self.run.path)}",
              file=sys.stderr, flush=True)
        return True

    def _lrs(self) -> dict[str, float]:
        """``{"lr/<group name>": learning rate}`` for every optimiser group (names from
        :meth:`System.param_groups`; a group without one is named by its index)."""
        out: dict[str, float] = {}
        for i, g in enumerate(self.optimizer.param_groups):
            key = f"lr/{g.get('name', i)}"
            out[key if key not in out else f"{key}.{i}"] = g["lr"]
        return out

    def validate(self) -> dict[str, float]:
        """The validation record of this step (:func:`~pipeline.validation.build_validators`; {} without), called
        on every rank at the same steps. Every random-number state is restored after it and it is not counted
        in ``elapsed``, so training goes on exactly as it would have without it. Under several processes only
        rank 0 validates; the others wait for it here, outside the training clock, not in the next step."""
        from pipeline import distributed

        record: dict[str, float] = {}
        for validator in self.validators:
            state = rng_state()
            try:
                record.update(validator(self.step))
            finally:
                set_rng_state(state)
                self.system.train()
            for logger in self.loggers if validator.preview is not None else ():
                logger.image(validator.tag, validator.preview[1], self.step)
        distributed.all_reduce_mean(torch.zeros(1), self.dist, what="waiting for rank 0's validation",
                                    step=self.step, run_dir=self.run.path)  # a no-op for one process
        return record

    @contextmanager
    def _loggers_open(self):
        """Open the :attr:`loggers` the config asks for (rank 0) and close them however :meth:`fit` ends."""
        t = self.cfg.train
        try:
            if t.tensorboard and self.dist.is_main:
                from pipeline.tensorboard_log import TensorBoardLog

                self.loggers.append(TensorBoardLog(self.run.path, resume_step=self.step or None))
            if t.wandb and self.dist.is_main:
                from pipeline.wandb_log import WandbLog

                self.loggers.append(WandbLog(self.run.path, t.wandb_project, self.cfg.to_dict()))
            yield
        finally:
            while self.loggers:
                self.loggers.pop().close()

    # -- loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``train.steps`` or ``train.max_seconds``: metrics every ``log_every`` steps,
        checkpoints every ``checkpoint_every`` steps and at the end. A stop request
        (:class:`StopRequest`) ends it early with ``interrupted=True``."""
        from pipeline.progress import StepProgress

        t = self.cfg.train
        if self.step >= t.steps or (t.max_seconds is not None and self.elapsed >= t.max_seconds):
            return TrainResult(self.step, 0.0)
        t0 = time.perf_counter()
        last_ckpt = self.step if self.run.latest_checkpoint() is not None else -1
        last_log, rec = self.step, None
        interrupted = False
        val_text = ""
        for validator in self.validators if self.progress else ():
            print(f"validating every {t.val_every} steps: {validator.describe()}; {validator.key} in "
                  f"metrics.jsonl, images in {validator.out_dir}", file=sys.stderr, flush=True)
        with self.stop.installed(), StepProgress(t.steps, self.step, "training", enabled=self.progress) as bar, \
                self._loggers_open():
            try:
                while self.step < t.steps:
                    if t.max_seconds is not None and self.elapsed >= t.max_seconds:
                        if rec is not None and last_log != self.step:  # the budget's last step is logged too
                            self.log({"step": self.step, "time": round(self.elapsed, 3), **rec})
                        with self.stop.shielded():
                            self.save()
                            last_ckpt = self.step
                        break
                    rec = self.train_step()
                    validating = t.val_every is not None and (self.step % t.val_every == 0 or self.step == t.steps)
                    if validating:
                        val = self.validate()
                        rec.update(val)
                        val_text = "".join(f" {k} {v:.2f}" for k, v in val.items())
                    bar.advance(self.step, f"loss {rec['loss']:.4f}" + (f" psnr {rec['psnr_train']:.2f}" if "psnr_train" in rec else "")
                                + val_text)
                    if self.step % t.log_every == 0 or self.step == t.steps or validating:
                        self.log({"step": self.step, "time": round(self.elapsed, 3), **rec})
                        last_log = self.step
                    if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                        with self.stop.shielded():
                            self.save()
                            last_ckpt = self.step
                    if self._stop_agreed:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
                if self._stop_agreed and self.step > last_ckpt:  # a clean step boundary
                    with self.stop.shielded(then_stop=False):  # stopping already
                        self.save()
                        last_ckpt = self.step
            # a stop asked for during the last step's logging or saving (or the time budget's save)
            # arrives after the loop's last look: still an interruption, not a finished run
            interrupted = interrupted or self.stop.requested
        return TrainResult(self.step, time.perf_counter() - t0, interrupted, saved=last_ckpt == self.step)
