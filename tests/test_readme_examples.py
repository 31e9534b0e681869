"""The README's curl examples work when pasted: each one that sends a body says it is JSON, and
the body parses (as the shell hands it to curl: quotes removed, ``\\"`` unescaped)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def curl_commands() -> list[list[str]]:
    """Every curl command of the README's shell blocks, as the shell splits it."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0] if not line.lstrip().startswith("#") else ""
            if "curl " in line:
                words = shlex.split(line)
                start = next(i for i, word in enumerate(words) if word.endswith("curl"))
                commands.append(words[start:])
    return commands


def test_readme_curl_bodies_are_json_and_say_so() -> None:
    """Every ``curl -d`` example carries ``Content-Type: application/json`` and a JSON body."""
    with_body = 0
    for words in curl_commands():
        bodies = [words[i + 1] for i, word in enumerate(words) if word in ("-d", "--data")]
        if not bodies:
            continue
        with_body += 1
        headers = [words[i + 1].lower() for i, word in enumerate(words) if word == "-H"]
        assert "content-type: application/json" in headers, " ".join(words)
        for body in bodies:
            assert isinstance(json.loads(body), dict), body
    assert with_body >= 7  # the README's examples: none was skipped by the parsing above


def test_readme_writes_the_command_one_way() -> None:
    """``relay ...`` throughout; how to get it (``.venv/bin/relay``, the venv) is said once."""
    text = README.read_text()
    assert text.count(".venv/bin/relay") == 1
    assert "python -m service" not in text
    assert "make run PORT=8080" in text
