"""Experiments of the papers as one command each, built from the pipeline's stages."""
