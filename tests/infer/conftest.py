"""Fixtures of the inference tests."""

from __future__ import annotations

import pytest
import torch

from elmforge import OpenELMForCausalLM
from tests.shapes import micro_config


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    """A random micro-shape model directory (seed 0), no tokenizer."""
    directory = tmp_path_factory.mktemp("micro")
    torch.manual_seed(0)
    OpenELMForCausalLM(micro_config()).save_pretrained(directory)
    return directory
