"""DeepLabV2 in plain torch, trained on pseudo masks with the confidence-guided loss."""
