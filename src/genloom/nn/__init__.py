"""genloom.nn: layers with no task knowledge (attention + KV cache, norms, probe points)."""
