"""The HTTP API: thin handlers that parse, call one function, and render."""
