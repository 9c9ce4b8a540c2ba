"""Model files: the model configuration, checkpoint reading/writing, building an SSD from either."""
