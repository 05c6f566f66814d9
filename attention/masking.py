"""The masked-logit constants every kernel shares.

Which keys a query sees is an `attention.masks` object (causal, windows,
lengths and the sparse patterns), evaluated per tile from positions; these
are the values a masked logit takes and the test for a row that saw none.
A query that sees no key gets an output of exactly zero.
"""

# Masked logits are set to this large finite value, never -inf (which gives
# NaN through exp(-inf - -inf)) nor finfo.min (whose double is -inf). Logits
# are always float32 here.
NEG_INF = -1e30
# A row whose running maximum stays below this saw no key.
MASKED_BELOW = NEG_INF / 2
