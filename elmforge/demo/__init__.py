"""``elmforge demo``: the main job on the CPU (:mod:`elmforge.demo.pretrain`) and the fine-tuning
demo (:mod:`elmforge.demo.finetune`). Apps over the stages."""
