"""Inference: from arrays of images to label maps, in batches (sliding windows later)."""

from .predict import image_tensor, images_to_predict, predict_batches, predict_batches_at

__all__ = ["image_tensor", "images_to_predict", "predict_batches", "predict_batches_at"]
