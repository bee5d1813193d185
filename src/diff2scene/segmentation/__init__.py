"""The 2D branch: segmenters that turn an image into masks with embeddings."""
