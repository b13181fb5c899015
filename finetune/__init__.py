"""Supervised fine-tuning of action classifiers."""
