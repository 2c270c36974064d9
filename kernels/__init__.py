"""Model specs and a real PyTorch serving engine.

`spec.py` and `shape.py` are torch-free (the simulator reads them); everything else needs torch.
"""
