"""Size limits for input images (a light module: the CLI reads its defaults at import)."""

from __future__ import annotations

# Images above this many pixels are refused from their header, before they are decoded
# (``--max-pixels``). The outputs are full-size (mask, CAMs, CRF confidence), so memory grows
# with the pixel count whatever --max-side is: about 8.5 bytes per pixel plus 8.3 per label
# (benchmarks/image_memory.py), i.e. about 1.3 GB at this limit with 3 labels, 2.3 GB with 6.
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow refuses images above this on its own (twice its Image.MAX_IMAGE_PIXELS), a safety
# net against decompression bombs that no --max-pixels can lift.
PILLOW_PIXEL_LIMIT = 800_000_000
