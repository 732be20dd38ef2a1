"""Diagnostics of trained models (cross-modal input ablation)."""
