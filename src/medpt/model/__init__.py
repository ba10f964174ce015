"""Models: hub (mirrors, cache, offline), loading (model, tokenizer, precision, limits), files (safetensors checks and
the weights fingerprint), adapter (a run's base + adapter, loaded once as two variants), and the commands
`medpt download` (download) and `medpt init-tiny` (init_tiny)."""
