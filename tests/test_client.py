"""The HTTP client and what every command that talks to a server shares: API keys from files and the
environment, URLs, loopback, no redirects, bounded answers from hostile servers."""

from __future__ import annotations

import pytest

from qwen_deploy.client import read_api_key
from qwen_deploy.errors import UsageError


@pytest.mark.parametrize("content", ["", "two words", "a\nb", "\x01bad"])
def test_bad_api_key_files(tmp_path, content):
    key = tmp_path / "key"
    key.write_text(content)
    with pytest.raises(UsageError):
        read_api_key(str(key))


def test_api_key_file_one_line(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-123\n")
    assert read_api_key(str(key)) == "sk-123"
    with pytest.raises(UsageError, match="does not exist"):
        read_api_key(str(tmp_path / "missing"))


def test_api_key_from_the_environment_in_the_engines_names():
    from qwen_deploy.client import env_api_key

    assert env_api_key({"API_KEY": "a"}) == "a"
    assert env_api_key({"VLLM_API_KEY": "v", "API_KEY": "a"}) == "v"
    assert env_api_key({"QWEN_DEPLOY_API_KEY": "q", "API_KEY": "a"}) == "q"
    assert env_api_key({"API_KEY": ""}) is None
