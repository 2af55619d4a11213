"""FineRS, Dr. Seg and SegAnswer reproduction library."""
