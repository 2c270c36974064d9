"""Projection of traces too large to replay: streamed, binned, three estimates (paper, theoretical, load-aware)."""
