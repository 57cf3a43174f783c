"""``elmforge bench``: engines timed side by side on the same weights (elmforge's eager and
compiled paths, llama.cpp, mlx-lm, a naive port, a uniform twin), with a memory-roofline probe;
JSON, Markdown and PNG reports. An app over the inference engine, not part of it."""
