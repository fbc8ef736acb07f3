"""Data engine: synthetic chest X-ray phantoms and loaders for real datasets."""
