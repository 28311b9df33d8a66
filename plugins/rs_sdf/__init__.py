"""Built-in plugin ``rs_sdf``: randomized smoothing of a voxel occupancy grid as a certified weak SDF."""
