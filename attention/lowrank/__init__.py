"""Low-rank attention: keys and values projected along the sequence
(Linformer)."""
