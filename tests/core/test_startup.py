"""Start-up: the CLI parses before it imports torch; ``import elmforge`` stays cheap and still
puts OpenELM into transformers' Auto classes, whichever is imported first."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elmforge import __version__
from elmforge.cli.main import VERB_MODULES
from tests.cli_support import run_elmforge

HEAVY = ("torch", "transformers", "numpy", "lm_eval", "pyarrow", "tokenizers", "datasets")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (nothing imported yet), from the repository's root."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_help_and_usage_errors_import_nothing_heavy():
    # Every verb's --help, the top-level --help and a usage error, all in one process: none may
    # import a heavy library (parse first, import after).
    proc = run_python(
        """
        import contextlib, io, json, sys
        from elmforge.cli.main import VERB_MODULES, build_parser, main

        build_parser()
        codes = {}
        for argv in [["--help"], *[[verb, "--help"] for verb in VERB_MODULES], ["generate"]]:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as exit:
                    codes[" ".join(argv)] = exit.code
        heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
        print(json.dumps({"codes": codes, "heavy": heavy}))
        """,
        *HEAVY,
    )
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    assert result["codes"]["--help"] == 0
    assert result["codes"]["generate"] == 2  # a usage error: MODEL is missing
    for verb in ("pretrain", "demo", "evaluate", "generate", "info", "convert", "data"):
        assert result["codes"][f"{verb} --help"] == 0, verb
    assert set(VERB_MODULES) >= {"pretrain", "evaluate", "generate"}


def test_version():
    proc = run_elmforge("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"elmforge {__version__}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from elmforge import OpenELMConfig, OpenELMForCausalLM

    directory = tmp_path_factory.mktemp("micro")
    OpenELMForCausalLM(OpenELMConfig.from_name("OpenELM-micro", vocab_size=300)).save_pretrained(
        directory
    )
    return directory


AUTO_LOADS = """
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    print(type(model).__module__ + "." + type(model).__name__)
"""


@pytest.mark.parametrize(
    "before",
    [
        # import elmforge first: cheap, and the Auto classes still know OpenELM afterwards
        "import elmforge\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules",
        # transformers' Auto classes already imported
        "from transformers import AutoConfig, AutoModelForCausalLM\nimport elmforge",
        # transformers' own import of modeling_utils pulls configuration_auto in half-way: the
        # hook fires then, and must not import anything modeling_utils is still defining
        "import elmforge\nfrom transformers import PreTrainedModel",
        "from transformers import PreTrainedModel\nimport elmforge",
    ],
    ids=["elmforge-first", "auto-classes-first", "hook-mid-import", "modeling-utils-first"],
)
def test_auto_model_loads_openelm_after_import_elmforge(model_dir, before):
    proc = run_python("import sys\n" + before + "\n" + textwrap.dedent(AUTO_LOADS), str(model_dir))
    assert proc.stdout.strip() == "elmforge.model.modeling.OpenELMForCausalLM"


def test_auto_config_first_then_auto_model_from_config(model_dir):
    proc = run_python(
        """
        import sys
        import elmforge
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(sys.argv[1])
        from transformers import AutoModelForCausalLM
        print(type(config).__name__, type(AutoModelForCausalLM.from_config(config)).__name__)
        """,
        str(model_dir),
    )
    assert proc.stdout.split() == ["OpenELMConfig", "OpenELMForCausalLM"]
