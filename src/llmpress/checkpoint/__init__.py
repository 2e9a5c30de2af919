"""Checkpoint I/O: the compressed-tensors format, streamed safetensors shards."""
