"""Data: synthetic drone videos, frame extraction, FineRS-4k annotations, splits."""
