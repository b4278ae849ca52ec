"""Turning class probabilities into label maps: dense CRF and confidence thresholding."""
