"""Fixtures of the inference tests."""

from __future__ import annotations

import pytest
import torch

from elmforge import OpenELMConfig, OpenELMForCausalLM


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    """A random OpenELM-micro model directory (seed 0), no tokenizer."""
    directory = tmp_path_factory.mktemp("micro")
    torch.manual_seed(0)
    OpenELMForCausalLM(OpenELMConfig.from_name("OpenELM-micro")).save_pretrained(directory)
    return directory
