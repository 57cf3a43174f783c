"""Artefacts for other runtimes: GGUF for llama.cpp (and back), MLX for mlx-lm, and complete
model directories (tokenizer, generation config, chat template) for every tool.

- :mod:`elmforge.export.prepare`: :func:`complete_model_dir` / :func:`prepare_model_dir` /
  :func:`corenet_to_model_dir` (MODEL as a run or checkpoint directory:
  :func:`elmforge.layout.resolve_model_dir`, as for every verb);
- :mod:`elmforge.export.gguf`: :func:`hf_to_gguf` (f32, f16, bf16, q8_0);
  :mod:`elmforge.export.gguf_read`: :func:`gguf_to_hf`;
- :mod:`elmforge.export.vocab`: tokenizers <-> GGUF vocabularies (SentencePiece and byte-level BPE);
- :mod:`elmforge.export.mlx`: :func:`hf_to_mlx` on mlx-lm's own converter.

Facts the code relies on are in docs/export.md.
"""
