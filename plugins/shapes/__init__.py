"""Built-in plugin ``shapes``: shape-collection scene sources (R2N2 layout, procedural families) and the
image encoder shared by the single-image decoders."""
