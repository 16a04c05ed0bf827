"""EMMR: Ensemble-based Missing Modality Reconstruction (Zeng, Zhou and Liu, EMNLP 2022), done as the paper says."""

__version__ = "0.1.0"
