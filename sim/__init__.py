"""The SimPy serving simulator: cluster, policies, cost models, energy accounting. Never imports torch."""
