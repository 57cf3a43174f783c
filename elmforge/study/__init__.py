"""Studies that re-test the paper's claims with seeds and error bars.

- ``lws``: layer-wise scaling against a uniform model matched to its parameter count
  (:mod:`elmforge.study.lws`);
- ``averaging``: the last K checkpoints, their average and the final model
  (:mod:`elmforge.study.averaging`);
- ``tokens``: validation loss and zero-shot accuracy against tokens seen
  (:mod:`elmforge.study.tokens`).
"""
