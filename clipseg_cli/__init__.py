"""wsss-label: pixel pseudo masks from image-level labels with a frozen CLIP (CLIP-ES)."""

__version__ = "0.1.0"
