"""Attention restricted by hashing: Reformer LSH attention and its rounds."""
