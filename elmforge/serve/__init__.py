"""``elmforge serve``: an OpenAI-compatible HTTP server (``protocol`` checks requests, ``responses``
shapes answers, ``scheduler`` batches on the model's thread, ``app`` routes, ``server`` binds)."""
