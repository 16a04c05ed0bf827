"""The network, one piece per module, each citing the paper's equations (Zeng, Zhou and Liu, EMNLP 2022)."""
