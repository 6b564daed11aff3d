"""Accuracy scoring of the harness's answers (ROUGE, GSM8K, MBXP)."""
