"""Weight files live in this folder (see README.md); ``python -m weights.convert_vgg`` builds the SSD base network."""
