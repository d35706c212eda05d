"""Inference: from arrays of images to label maps, in batches (sliding windows later)."""

from .predict import image_tensor, predict_batches

__all__ = ["image_tensor", "predict_batches"]
