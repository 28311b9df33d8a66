"""Built-in plugin ``sample_network``: level-set sampling, sample networks, point-cloud surface
reconstruction (Eq. 13), classifier margin heads (Eq. 11/12) — Atzmon et al., NeurIPS 2019.

Only names and config classes are imported here; torch loads lazily inside the factories.
"""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.sample_network import __version__  # noqa: F401  (reported by `nls plugins`)
from plugins.sample_network import config as C

M = "plugins.sample_network"

MARGIN_HEADS = {
    "margin_ce": "cross-entropy (baseline head)",
    "margin_hinge": "multi-class hinge max(0, 1 − margin) (baseline head)",
    "geometric_svm": "geometric SVM, Eq. 11 (α = −1, L∞ via projections on S₋₁, S₀, S₁)",
    "robust_margin": "robustness margin, Eq. 12 (ε_train, λ_j, ρ along the largest-gradient axis)",
    "pgd_at": "PGD adversarial training (Madry et al.) (baseline head)",
    "trades": "TRADES (Zhang et al. 2019) (baseline head)",
}


@hookimpl
def nls_register_fields(register):
    register("mlp_sdf", f"{M}.fields:build_mlp_sdf", config=C.MLPSDFConfig, produces={"sdf", "rgb"},
             description=C.MLPSDFConfig.__doc__)


@hookimpl
def nls_register_losses(register):
    register("level_set_recon", f"{M}.losses:build_recon", config=C.ReconConfig,
             consumes=[{"sdf", "points"}], description=C.ReconConfig.__doc__)
    register("udf_regression", f"{M}.losses:build_udf", config=C.UDFRegressionConfig,
             consumes=[{"sdf", "points"}], description=C.UDFRegressionConfig.__doc__)
    for name, what in MARGIN_HEADS.items():
        register(name, f"{M}.margins:build_{name}", config=C.MarginConfig,
                 consumes=[{"sdf", "gt_mesh"}],
                 description=f"{what}; on the occupancy classifier of a 3D field (labels from the GT mesh)")


@hookimpl
def nls_register_scene_sources(register):
    register("scan", f"{M}.data:build_scan", config=C.ScanConfig, produces={"points", "gt_mesh"},
             description=C.ScanConfig.__doc__)
