"""Trace data bundled with tokenjoule (Azure LLM inference 2023, CC-BY 4.0)."""
