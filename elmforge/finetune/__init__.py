"""Fine-tuning OpenELM: SFT and DPO, full or with LoRA/DoRA adapters (``elmforge finetune``).

Modules, in the order data flows through them: ``data`` (read rows, detect their format),
``prompts`` (instruction prompt styles, LLM-Adapters' byte for byte), ``tokenize`` (render,
tokenise, mask, truncate), ``losses`` (masked cross-entropy, DPO), ``adapters`` (PEFT),
``config`` (the run schema), ``trainer`` (the loop), ``corenet_peft`` (Apple's released
adapters), ``demo``.
"""
