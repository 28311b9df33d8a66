"""Plugin ``sample_network``: "Controlling Neural Level Sets" (Atzmon, Haim, Yariv, Israelov,
Maron, Lipman; NeurIPS 2019).

* :mod:`.projection` — level-set sampling: generalized Newton (Eq. 4/5, Moore–Penrose for
  l > 1) and the false-position / PGD-direction projection of §3.2;
* :mod:`.sample_net` — sample networks (Eq. 9), whose θ-gradient is Eq. 8;
* :mod:`.losses` — surface reconstruction from raw point clouds (Eq. 13), the naive
  |F|-regression baseline;
* :mod:`.curves` — curve reconstruction with F: R³ → R² and polyline export;
* :mod:`.margins` — classifier margin heads: geometric SVM (Eq. 11), robustness margin
  (Eq. 12) and the CE / hinge / PGD-AT / TRADES baselines in one code path;
* :mod:`.fields` — the ``mlp_sdf`` field (geometric initialisation of Atzmon & Lipman, SAL);
* :mod:`.data` — point-cloud scans (noise / subsampling / partial crops) and the
  classification loaders (Fashion-MNIST, MNIST-test split).

Only :mod:`.config` and :mod:`.plugin` are imported by ``nls plugins``; both avoid torch.
"""

__version__ = "0.1.0"
