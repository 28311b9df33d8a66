"""Plugin ``lipschitz``: 1-Lipschitz neural distance fields (Coiffier & Béthune, SGP 2024).

Components: field ``lipschitz_sll`` (SLL network, Araujo et al. 2023), loss ``hkr`` (hinge-
Kantorovich-Rubinstein on generalized-winding-number labels, signed or unsigned), renderer
``sphere_tracing``, evaluators ``sphere_trace``, ``distance_quality`` and ``level_set_points``.
Functions: :mod:`.labels` (labelling), :mod:`.tracing` (sphere tracing, overshoot checks),
:mod:`.queries` (closest-point projection, empty-ball radius, level-set point export).
"""

__version__ = "0.1.0"
