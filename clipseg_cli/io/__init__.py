"""Writing outputs safely: atomic files, palette PNGs, arrays, JSON."""
