"""Calibration: measure a GPU and an engine, fit the cost form, write profile files, validate against replays.

`cost_form.py` and `profile.py` are what the simulator imports; neither imports torch. Subpackages by job:
`measure/` (meters and timing), `sweep/` (what is measured, and the drivers), `validate/` (replays and reports).
"""
