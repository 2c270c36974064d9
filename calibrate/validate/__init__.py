"""Validating: replays of trace scenarios on the real engine with the meter on, and the accuracy report on them."""
