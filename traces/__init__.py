"""Request traces: schema, loaders, synthetic arrivals, binning and streaming. Never imports torch."""
