"""Model files: the model configuration (config.py), checkpoint reading/writing and building an SSD from it
(checkpoint.py), the exported-file format (exported.py) and a model's class names (names.py)."""
