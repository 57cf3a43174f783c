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
from tests.cli_support import run_elmforge
from tests.shapes import micro_config

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
    # --help of every registered verb and sub-command, the top-level --help and a usage error,
    # all in one process: each exits 0 (2 for the usage error) and none imports a heavy library
    # (parse first, import after).
    proc = run_python(
        """
        import contextlib, importlib.util, io, json, sys
        from elmforge.cli.main import VERB_MODULES, build_parser, main, subcommand_parsers

        commands = [list(words) for words, _ in subcommand_parsers(build_parser()) if words]
        with_module = sorted(
            verb for verb, module in VERB_MODULES.items()
            if importlib.util.find_spec(f"elmforge.cli.{module}") is not None
        )
        codes = {}
        for argv in [["--help"], *[[*words, "--help"] for words in commands], ["generate"]]:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as exit:
                    codes[" ".join(argv)] = exit.code
        heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
        print(json.dumps({"codes": codes, "heavy": heavy, "with_module": with_module}))
        """,
        *HEAVY,
    )
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    codes = result.pop("codes")
    assert codes.pop("generate") == 2  # a usage error: MODEL is missing
    assert codes == {argv: 0 for argv in codes}
    # Every verb whose module exists is registered (and so was asked for --help above).
    registered = {argv.split()[0] for argv in codes if argv != "--help"}
    assert registered == set(result["with_module"])
    assert {"pretrain", "demo", "evaluate", "generate", "info", "convert", "data"} <= registered
    assert {"convert hf-to-gguf --help", "data inspect --help", "tokenizer train --help"} <= set(
        codes
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "--config", "x.yaml", "--out", "o", "--optim.l", "1e-3"],
        ["convert", "hf-to-corenet", "m", "o.pt", "--forc"],
        ["data", "inspect", "x.yaml", "--max-doc", "3"],
        ["tokenizer", "train", "--data", "x", "--vocab-size", "300", "--out", "o", "--forc"],
    ],
)
def test_no_parser_accepts_an_abbreviated_flag(argv, capsys):
    from elmforge.cli.main import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "unrecognized arguments: " + argv[-2 if argv[-1][0].isdigit() else -1] in (
        capsys.readouterr().err
    )


def test_version():
    proc = run_elmforge("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"elmforge {__version__}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from elmforge import OpenELMForCausalLM

    directory = tmp_path_factory.mktemp("micro")
    OpenELMForCausalLM(micro_config(vocab_size=300)).save_pretrained(directory)
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
