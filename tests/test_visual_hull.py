"""``nls export --visual-hull PX`` (:mod:`pipeline.visual_hull`): a mesh cut to the visual hull of the training
views' masks keeps the object and loses a floater beside it; growing the masks keeps a shell a pixel outside them;
views that do not see a point do not judge it; the CLI says what it dropped and refuses what does not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.types import Cameras, NLSError, PosedImages
from pipeline.visual_hull import cut_to_visual_hull, hull_masks, inside_hull


def _views(radius: float = 0.5, n: int = 6, size: int = 48) -> PosedImages:
    """``n`` views from 3 units around the origin whose alpha is 1 where the pixel-centre ray meets the ball of
    ``radius`` about the origin (its exact silhouette)."""
    from pipeline.rays import image_rays
    from pipeline.scenes.mesh_render import look_at

    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eyes = np.stack([3 * np.cos(ang), 3 * np.sin(ang), 0.8 * np.sin(3 * ang)], 1)
    c2w = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float64)
    f = torch.full((n,), 40.0, dtype=torch.float64)
    cams = Cameras(c2w, f, f, torch.full((n,), size / 2, dtype=torch.float64),
                   torch.full((n,), size / 2, dtype=torch.float64), size, size)
    alphas = np.zeros((n, size, size, 1))
    for i in range(n):
        o, d = image_rays(cams, i)
        o, d = o.numpy(), d.numpy()
        b = np.einsum("ij,ij->i", o, d)
        hit = b * b - (np.einsum("ij,ij->i", o, o) - radius ** 2) >= 0
        alphas[i, ..., 0] = hit.reshape(size, size)
    return PosedImages(torch.zeros(n, size, size, 3), cams, torch.from_numpy(alphas).float())


def test_the_object_stays_and_a_floater_beside_it_goes():
    import trimesh

    views = _views()
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.45)
    floater = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    floater.apply_translation((0.0, 0.0, 0.9))  # (above the ball: off its silhouette in every view that sees it)
    mesh = trimesh.util.concatenate([ball, floater])
    cut, dropped = cut_to_visual_hull(mesh, views, grow=0.0)
    assert dropped == len(floater.faces) and len(cut.faces) == len(ball.faces)
    assert np.allclose(np.linalg.norm(cut.vertices, axis=1), 0.45)


def test_growing_the_masks_keeps_a_shell_just_outside_them():
    """Points on a sphere 2% outside the silhouette's (about 0.4 px at 40 px focal and 3 units) fall off some mask
    ungrown, and all stay with the masks grown by 2 px; points far outside stay off."""
    views = _views()
    rng = np.random.default_rng(0)
    d = rng.normal(size=(400, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    near = 0.51 * d
    assert not inside_hull(near, views, hull_masks(views, 0.0)).all()
    assert inside_hull(near, views, hull_masks(views, 2.0)).all()
    assert not inside_hull(0.9 * d, views, hull_masks(views, 2.0)).any()


def test_views_that_do_not_see_a_point_do_not_judge_it():
    views = _views(n=1)
    behind = views.cameras.c2w[0, :3, 3].numpy() * 2.0  # (behind the camera, far off the ball)
    assert inside_hull(behind[None], views, hull_masks(views, 0.0)).all()
    beside = np.array([[0.0, 0.0, 0.0]]) + 50.0 * views.cameras.c2w[0, :3, 0].numpy()  # (outside the picture)
    assert inside_hull(beside, views, hull_masks(views, 0.0)).all()
    with pytest.raises(NLSError, match="no alpha"):
        hull_masks(PosedImages(views.images, views.cameras), 1.0)


def test_nls_export_visual_hull(nls, tiny_scene, tmp_path):
    nls("reconstruct", str(tiny_scene()), "--steps", "40", "-q", "--output", str(tmp_path / "runs"), check=True)
    run = next((tmp_path / "runs").glob("*/*/*/summary.json")).parent
    done = nls("export", str(run), "-o", str(tmp_path / "cut.ply"), "--visual-hull", "2", "--level", "0.5", "-q",
               check=True)
    assert "faces off the visual hull of the 8 training views' masks (grown by 2 px) dropped" in done.stdout
    refused = nls("export", str(run), "--points", "100", "--visual-hull", "0", "-o", str(tmp_path / "p.ply"))
    assert refused.returncode == 2 and "--visual-hull" in refused.stderr
    bad = nls("export", str(run), "-o", str(tmp_path / "x.ply"), "--visual-hull", "-1")
    assert bad.returncode == 2 and "a number of pixels >= 0" in bad.stderr
