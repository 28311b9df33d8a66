"""Built-in plugin ``hypernet``: image -> weights hypernetwork decoder for occupancy MLPs (Littwin & Wolf 2019)."""
