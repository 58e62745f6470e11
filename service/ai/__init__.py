"""Claude (or the offline analyzer) answering the three questions. Knows nothing of HTTP."""
