"""Scoring masks and CAMs against ground truth: confusion matrix, mIoU, threshold sweeps."""
