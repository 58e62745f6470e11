"""The queue itself. It knows nothing of AI: job types are names mapped to processors."""
