"""Built-in plugin ``deep_level_sets``: implicit level-set layers (Michalkiewicz et al. 2019)."""
