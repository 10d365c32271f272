"""Word problems in real formats: veRL parquet, an HF tokenizer and checkpoint, the math reward."""
