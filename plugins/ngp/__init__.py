"""Built-in plugin ``ngp``: the shared NeRF backend (hash-grid and dense-grid fields, nerfacc rendering)."""
