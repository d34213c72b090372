"""Start-up checks of a model folder: a tested architecture passes, anything else is refused
with the architecture and the tested ones named."""

import json

import pytest

from common.shell.preflight import SUPPORTED_ARCHITECTURES, StartupError, check_model_folder


def write_config(folder, **config):
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch", sorted(SUPPORTED_ARCHITECTURES))
def test_a_tested_architecture_passes(tmp_path, arch):
    check_model_folder(write_config(tmp_path, model_type="x", architectures=[arch]))


def test_an_untested_architecture_is_refused_and_named(tmp_path):
    folder = write_config(tmp_path, model_type="mistral", architectures=["MistralForCausalLM"])
    with pytest.raises(StartupError) as info:
        check_model_folder(folder)
    message = str(info.value)
    assert "['MistralForCausalLM'] is not supported" in message
    assert "tested: Qwen2ForCausalLM, LlamaForCausalLM" in message


def test_a_config_naming_no_architecture_is_refused(tmp_path):
    with pytest.raises(StartupError, match="architecture not named is not supported"):
        check_model_folder(write_config(tmp_path, model_type="llama"))
