"""Running models: loading a model directory with its tokenizer, generation with streaming."""
