"""Per-image exposure compensation: a colour transform of each training image, learned with the field.

Photos of one capture rarely share one exposure and white balance (phones and most cameras set both per
shot). A radiance field fitted to them has to explain a brighter or bluer image by the scene itself, and
does so with view-dependent colour, haze and floaters in front of the cameras. Urban Radiance Fields
(Rematas et al., CVPR 2022) compensates exposure by mapping each rendered colour through an affine transform
of its image before the photometric loss; NeRF in the Wild (Martin-Brualla et al. 2021) feeds a per-image
appearance code to the colour head instead. This module takes the first shape:

* ``gain``: a per-channel gain per image, ``T_i(c) = g_i ⊙ c`` (exposure and white balance: 3 numbers);
* ``affine``: ``T_i(c) = A_i c + b_i`` (also channel mixing and an offset: 12 numbers).

Departures from Urban Radiance Fields: the transform's entries are free parameters of each image (there
they are decoded from a per-image latent code by a small network; free entries have at least that freedom
and need no settings of their own); and the transform acts on the *object's* colour only, the
premultiplied colour ``rgb - (1 - opacity) * background``, with ``b_i`` scaled by the opacity, so the
renderer's background, which is no part of the scene, is left as it is (for a field of colours ``c_k`` and
weights ``w_k`` along a ray this is the same as transforming every sample's colour before compositing).

The transforms are identified only up to one common transform, which the field would absorb. The mean
over the training images is held at the identity (log-gains, or ``A_i - I`` and ``b_i``, are stored minus
their mean), so the field's colours are those of the *average* exposure, and views rendered after training
(test views, ``nls render``) use the identity: the average camera.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

class ImageExposure(nn.Module):
    """The learned colour transform of each of ``n_images`` training images (module docstring).

    ``forward(rgb (R,3), opacity (R,1) | None, image (R,) long, background (R,3) | (3,) | None) -> (R,3)``.
    Parameters start at the identity; :meth:`transforms` gives each image's ``A (N,3,3)``, ``b (N,3)``.
    """

    def __init__(self, n_images: int, kind: Literal["gain", "affine"] = "gain", lr: float = 3e-3):
        super().__init__()
        if kind not in ("gain", "affine"):
            raise ValueError(f"exposure kind {kind!r}: use 'gain' or 'affine'")
        if n_images < 1:
            raise ValueError(f"exposure needs at least one training image, got {n_images}")
        self.kind = kind
        self.lr = float(lr)
        if kind == "gain":
            self.log_gain = nn.Parameter(torch.zeros(n_images, 3))  # (N, 3)
        else:
            self.matrix = nn.Parameter(torch.zeros(n_images, 3, 3))  # (N, 3, 3), A_i - I before centring
            self.offset = nn.Parameter(torch.zeros(n_images, 3))  # (N, 3)

    @property
    def n_images(self) -> int:
        """How many images have a transform."""
        return int((self.log_gain if self.kind == "gain" else self.offset).shape[0])

    def gains(self) -> Tensor:
        """``kind: gain``: every image's gains ``(N, 3)``, their geometric mean 1 in each channel."""
        return torch.exp(self.log_gain - self.log_gain.mean(0, keepdim=True))

    def transforms(self) -> tuple[Tensor, Tensor]:
        """Every image's transform, centred so their mean is the identity: ``A (N, 3, 3)``, ``b (N, 3)``."""
        if self.kind == "gain":
            g = self.gains()
            return torch.diag_embed(g), torch.zeros_like(g)
        eye = torch.eye(3, dtype=self.matrix.dtype, device=self.matrix.device)
        a = eye + self.matrix - self.matrix.mean(0, keepdim=True)
        return a, self.offset - self.offset.mean(0, keepdim=True)

    def forward(self, rgb: Tensor, opacity, image: Tensor, background=None) -> Tensor:
        """Rendered colours ``rgb (R, 3)`` of rays from training images ``image (R,)`` as those images' cameras
        saw them: the object's colour (``rgb - (1 - opacity) * background``) transformed, the background kept.
        ``opacity (R, 1)`` None counts every ray as opaque; ``background`` None as black."""
        image = image.to(device=rgb.device, dtype=torch.long)
        alpha = torch.ones_like(rgb[:, :1]) if opacity is None else opacity.reshape(-1, 1).to(rgb.dtype)
        behind = (1 - alpha) * (0 if background is None else torch.as_tensor(background, dtype=rgb.dtype,
                                                                             device=rgb.device))
        obj = rgb - behind  # (R, 3) premultiplied object colour
        if self.kind == "gain":
            return self.gains()[image] * obj + behind
        a, b = self.transforms()
        return torch.einsum("rij,rj->ri", a[image], obj) + alpha * b[image] + behind

    def image_as_shot(self, out: dict, index: int, background=None) -> Tensor:
        """A rendered view of training image ``index`` (``out``: ``rgb (H, W, 3)``, ``opacity (H, W, 1)``) as that
        image's camera saw it: its ``rgb`` through the image's transform, ``(H, W, 3)``."""
        rgb = out["rgb"]
        opacity = out.get("opacity")
        flat = self(rgb.reshape(-1, 3), None if opacity is None else opacity.reshape(-1, 1),
                    torch.full((rgb.shape[0] * rgb.shape[1],), int(index), dtype=torch.long, device=rgb.device),
                    background)
        return flat.reshape(rgb.shape)

    def param_groups(self, lr: float) -> list[dict]:
        """One optimiser group at this module's own rate (``train.exposure_lr``), whatever the field's."""
        return [{"params": list(self.parameters()), "lr": self.lr}]

    def summary(self, names: list[str]) -> dict:
        """Each image's transform for ``exposure.json``: ``{"kind", "images": [{"name", "gain" | "matrix",
        "offset"}]}``, with ``names`` (one per image; the index where a name is missing)."""
        a, b = (t.detach().cpu() for t in self.transforms())
        g = self.gains().detach().cpu() if self.kind == "gain" else None
        rows = []
        for i in range(self.n_images):
            row: dict = {"name": names[i] if i < len(names) else str(i)}
            if g is not None:
                row["gain"] = [round(float(v), 5) for v in g[i]]
            else:
                row["matrix"] = [[round(float(v), 5) for v in r] for r in a[i]]
                row["offset"] = [round(float(v), 5) for v in b[i]]
            rows.append(row)
        return {"kind": self.kind, "images": rows}


def exposure_image(system, names: list[str], given: str) -> int:
    """The index of the training image ``given`` (a name from ``names``, the training split's, or an index into
    it) whose learned colour transform ``nls render --exposure`` renders with; an NLSError that says what is
    valid when ``system`` learned no exposure or no such image exists."""
    import difflib

    from pipeline.types import NLSError

    exposure = getattr(system, "exposure", None)
    if exposure is None:
        raise NLSError(f"--exposure {given}: this run learned no exposure (train.exposure: none), so every render "
                       f"is already the average camera's; train with train.exposure: gain or affine to render as "
                       f"one photo was shot")
    if given in names:
        return names.index(given)
    if given.lstrip("-").isdigit() and 0 <= int(given) < exposure.n_images:
        return int(given)
    close = difflib.get_close_matches(given, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else (f" (e.g. {', '.join(names[:3])})" if names else "")
    raise NLSError(f"--exposure {given}: no such training image; give one of the {exposure.n_images} training "
                   f"images' names or an index 0..{exposure.n_images - 1}{hint}")


def jitter_exposure(images: Tensor, alphas, background, jitter: float, seed: int) -> tuple[Tensor, Tensor]:
    """Simulated per-shot exposure and white balance, for testing :class:`ImageExposure` on rendered scenes.

    ``images (N, H, W, 3)`` composited on ``background`` (3,) with coverage ``alphas (N, H, W, 1)`` (None: all
    opaque). Each image's object colour is scaled by per-channel gains ``exp(u)``, ``u`` uniform in
    ``[-jitter, jitter]`` and then centred over the images (so the gains' geometric mean is 1 in each channel:
    the average camera is the renderer's, as :class:`ImageExposure` assumes), and clipped to [0, 1] as a camera
    saturates. Returns the new images and the gains ``(N, 3)``; seeded by ``seed`` alone.
    """
    gen = torch.Generator().manual_seed(int(seed))
    u = (torch.rand(images.shape[0], 3, generator=gen, dtype=torch.float64) * 2 - 1) * float(jitter)
    gains = torch.exp(u - u.mean(0, keepdim=True)).to(images.dtype)  # (N, 3)
    alpha = torch.ones_like(images[..., :1]) if alphas is None else alphas.to(images.dtype)
    behind = (1 - alpha) * torch.as_tensor(background, dtype=images.dtype)
    out = (gains[:, None, None, :] * (images - behind) + behind).clamp(0, 1)
    return out, gains
