"""Data files: class sets, background sets and prompt templates (installed as clipseg_cli.prompts)."""
