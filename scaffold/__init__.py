"""The gz command line."""
