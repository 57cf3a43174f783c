"""The pretraining data pipeline: sources, tokenizers, filtering, packing, resumable loading.

Kept light on purpose (no imports here): ``elmforge.data.sources`` streams documents,
``elmforge.data.tokenizer`` loads and trains tokenizers, ``elmforge.data.pipeline`` turns
sources into resumable, sharded batches of token ids.
"""
