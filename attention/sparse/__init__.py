"""Fixed sparse patterns at the cost of what they compute: the Sparse
Transformer, Longformer and BigBird, as blockwise attention under pattern
masks (`patterned`), reordered where a pattern is strided (`layouts`)."""
