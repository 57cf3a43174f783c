"""Fine-tuning OpenELM: SFT and DPO, full or with LoRA/DoRA adapters (``elmforge finetune``).

Modules, in the order data flows through them: ``data`` (read rows, detect their format),
``tokenize`` (render, tokenise, mask, truncate; prompt styles are :mod:`elmforge.data.prompts`),
``losses`` (masked cross-entropy, DPO), ``adapters`` (PEFT for training; applying and merging is
:mod:`elmforge.modeldir.adapters`), ``config`` (the run schema), ``steps`` and ``trainer`` (the
loop), ``corenet_peft`` (Apple's released adapters).
"""
