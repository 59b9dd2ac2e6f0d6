"""Evaluation of a distilled set: students trained on it, and image-quality and diversity metrics."""
