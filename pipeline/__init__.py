"""Data layer: offline repacking into WebDataset shards, and online sample planning and loading."""
