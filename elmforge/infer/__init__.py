"""Running models: generation with streaming and its options, incremental detokenisation, chat.
Loading a model is :mod:`elmforge.modeldir.loading`; timing engines is :mod:`elmforge.bench`."""
