"""The fleet view: many sites' signed records, read from their buckets (see status.py)."""
