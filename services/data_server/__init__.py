"""Per-node data server (Arrow Flight + Parquet)."""
