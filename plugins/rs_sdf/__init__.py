"""Plugin ``rs_sdf``: randomized smoothing of a voxel occupancy grid as a certified weak SDF
(Pérez, Pérez, Alfarra, Zarzar, Rojas, Ghanem, Arbeláez, "Deep Learning at the Intersection:
Certified Robustness as a Tool for 3D Vision", arXiv 2408.13135), on the shared NeRF backend.

Components: field ``voxel_occupancy`` (learnable soft-occupancy grid + hash/dense-grid colour,
3-phase schedule), certifier ``randomized_smoothing`` (occupancy -> weak SDF for any occupancy
field, one Gaussian blur per step), density map ``hard_occupancy`` (sigmoid of the weak SDF),
evaluators ``sdf_slices`` (colour-mapped SDF slices) and ``certify_check`` (grid vs Monte-Carlo).
Functions: :func:`.blur.gaussian_blur3d` (differentiable separable blur), :func:`.certify.certify`
(Cohen et al.'s CERTIFY for any occupancy callable), :func:`.certify.occupancy_to_sdf`.

What the weak SDF is, precisely (tested in tests/test_rs_sdf.py): it equals the signed distance
for a half-space; |weak SDF| is a certified radius of the *smoothed* classifier (never more than
the distance to its decision boundary {G*occ = 1/2}); for convex shapes it is >= the true signed
distance (smoothing shrinks them), so outside convex corners and edges it exceeds the true
distance (about 2 sigma at distance sigma diagonally out of a box corner) — the "lower bound"
reading holds inside, near smooth surfaces up to O(sigma^2 / curvature radius), not there.
"""

__version__ = "0.1.0"
