"""The gap analysis's own rows: requirements, documents, controls and their mappings."""
