"""Helpers of the AIMeasure module (panels kept out of AIMeasure.py)."""
