"""The pretraining data pipeline: sources, tokenizers, filtering, packing, resumable loading.

Kept light on purpose (no imports here): ``sources`` streams documents, ``config`` is the
``data:`` section, ``tokenizer`` / ``tokenizer_choice`` load, train and choose tokenizers,
``documents`` filters and tokenises, ``stream`` and ``loader`` turn sources into resumable,
sharded batches of token ids (the loader's docstring tells how), ``inspect`` reports on them,
``chat`` renders Apple's chat template.
"""
