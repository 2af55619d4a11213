"""Model bundles: tiny random Qwen2.5-VL + SAM 2.1 for offline tests, loaders, local-model checks."""
