"""Model-directory I/O: loading a model directory (or hub name) with its tokenizer, applying
adapters, writing and completing HF-layout directories. Below the engines and stages, above the
model and data layers (``docs/architecture.md``)."""
