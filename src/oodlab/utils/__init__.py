"""Small shared helpers: atomic files, manifests, errors, progress, hashing, path patterns."""
