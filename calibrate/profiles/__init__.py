"""Calibrated GPU profiles shipped with tokenjoule (measured; raw data beside each)."""
