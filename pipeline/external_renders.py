"""``nls eval RUN --renders DIR``: another method's renders of a run's eval split, scored against the run's ground
truth by the run's own image metrics (the ``psnr`` evaluator: PSNR, SSIM, colour-corrected scores, over the pixels
the views' ignore masks keep), so that a method trained on ``nls export RUN --dataset`` is scored exactly as the run
is: the same views, the same images, masks and code.

Each view of the eval split (as ``eval.every`` and ``eval.max_images`` choose) is found in ``DIR`` or any folder
below it by its name: ``<name>.png`` (or ``.jpg``, ``.tif``, ...), which is how ``nls export --dataset`` names the
images (``images/test/<name>.png``). An RGBA render is composited on the scene's background, as the ground truth
was. A render of another size, a view without a render, or a name two files share is an error that names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.evaluate import EvalContext, eval_indices
from pipeline.types import NLSError

#: the image files searched for renders
RENDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".exr")


def find_renders(folder: Path, names: list[str]) -> list[Path]:
    """The render of each view ``names`` (file stems) under ``folder``, searched recursively; NLSError naming the
    views without one (and a few files that were found) or the files that share a view's name."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in RENDER_SUFFIXES and p.is_file():
            found.setdefault(p.stem, []).append(p)
    missing = [n for n in names if n not in found]
    if missing:
        some = ", ".join(sorted(found)[:5]) or "no image files"
        raise NLSError(f"--renders {folder}: no render of {len(missing)} of the {len(names)} views scored "
                       f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); each is found by its name, "
                       f"NAME.png (or .jpg, .tif, ...) anywhere under the folder, and it has {some}")
    shared = [n for n in names if len(found[n]) > 1]
    if shared:
        raise NLSError(f"--renders {folder}: {len(found[shared[0]])} files are named {shared[0]!r} "
                       f"({', '.join(str(p.relative_to(folder)) for p in found[shared[0]][:3])}); give the folder "
                       f"that holds one render per view")
    return [found[n][0] for n in names]


def read_render(path: Path, size: tuple[int, int], background) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: the render ``path``, an RGBA one composited on ``background`` (3,); NLSError when
    it is not ``size`` (W, H), the size of its view."""
    from pipeline.scenes.blender import _read_image
    from pipeline.types import DataError

    try:
        img = _read_image(path)
    except DataError as exc:
        raise NLSError(f"--renders: {exc}") from None
    h, w = img.shape[:2]
    if (w, h) != tuple(size):
        raise NLSError(f"--renders: {path} is {w} x {h} and its view {size[0]} x {size[1]}; give renders at the "
                       f"views' size (nls export --dataset writes the images at the size the run scores)")
    if img.shape[-1] == 4:
        a = img[..., 3:]
        img = img[..., :3] * a + np.asarray(background, np.float32) * (1 - a)
    return np.clip(img[..., :3], 0.0, 1.0).astype(np.float32)


@dataclass
class ExternalRenders(EvalContext):
    """An :class:`EvalContext` whose renders are another method's, read from ``renders_from``; it has no depths
    and no mesh, so evaluators that need them are skipped with the reason."""

    renders_from: Optional[Path] = None

    @property
    def can_render(self) -> bool:
        """True when the scene has the eval split (the images come from :attr:`renders_from`)."""
        return (self.split or self.cfg.eval.split) in self.scene.splits

    def renders(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(render (H, W, 3), ground truth (H, W, 3))] float arrays of the eval split's chosen views."""
        if self._renders is None:
            split = self.scene.splits[self.split or self.cfg.eval.split]
            shown = eval_indices(len(split), self.cfg.eval.every, self.cfg.eval.max_images)
            names = [split.names[i] if i < len(split.names) else f"{i:03d}" for i in shown]
            paths = find_renders(Path(self.renders_from), names)
            size = (split.cameras.width, split.cameras.height)
            self._renders = [(read_render(p, size, self.scene.background), split.images[i].cpu().numpy())
                             for p, i in zip(paths, shown)]
        return self._renders

    @property
    def rendered(self) -> bool:
        """False: nothing was rendered (no renders folder is written beside the JSON)."""
        return False

    def depths(self) -> list:
        """No depths: NLSError (the evaluator that asked is skipped)."""
        raise NLSError(f"the renders of {self.renders_from} are images: there is no depth to score")

    def mesh(self):
        """No mesh: NLSError (the evaluator that asked is skipped)."""
        raise NLSError(f"the renders of {self.renders_from} are images: there is no mesh to score")
