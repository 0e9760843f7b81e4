"""Run a trained model on images: the detector, its device, heatmap overlays."""
