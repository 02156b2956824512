"""`engine skills new`: a new skill, or the next version of an existing one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from engine.errors import UserError
from engine.spec.positions import YAMLSyntaxError, read_text

LLM_TEMPLATE = """\
name: {name}
version: 1
description: {description}
inputs:
  text: {{type: string, minLength: 1}}
params:
  labels: [relevant, irrelevant]
llm:
  tier: local
  system: |
    Answer with one of: [[ labels | join(", ") ]].
  prompt: "Text: {{{{ text }}}}"
  schema:
    type: object
    properties:
      answer: {{enum: "[[ labels ]]"}}
    required: [answer]
    additionalProperties: false
  max_tokens: 16
tests:
  - inputs: {{text: "an example input"}}
    reply: {{answer: relevant}}
    expect: {{answer: relevant}}
"""

SCRIPT_TEMPLATE = """\
name: {name}
version: 1
description: {description}
inputs:
  text: {{type: string}}
params:
  suffix: "!"
script:
  function: {name}.py:{name}
  output:
    type: object
    properties:
      text: {{type: string}}
    required: [text]
tests:
  - inputs: {{text: "hello"}}
    expect: {{text: "hello!"}}
"""

SCRIPT_CODE = '''\
"""{name}@1: {summary}"""


def {name}(text: str, suffix: str = "!") -> dict:
    return {{"text": text + suffix}}
'''


def new_skill(name: str, root: Path, *, kind: Literal["llm", "script"] = "llm", group: str = "custom",
              description: str = "TODO: what this skill does, in one line.") -> Path:
    """Create `root/group/name/v1.yaml`; if the skill exists under `root`, copy its latest
    version to the next one instead. Returns the new file."""
    if not re.match(r"^[a-z][a-z0-9_]*$", name):
        raise UserError("a skill name is lowercase letters, digits and _ (starting with a letter)")
    existing = sorted(root.rglob(f"{name}/v*.yaml"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if existing:
        latest = existing[-1]
        version = int(re.sub(r"\D", "", latest.stem)) + 1
        target = latest.parent / f"v{version}.yaml"
        try:  # a regular file within the size limit, as skill files are read
            source = read_text(latest).replace("\r\n", "\n")
        except (YAMLSyntaxError, OSError) as e:
            raise UserError(f"cannot read {latest}: {getattr(e, 'message', None) or e}") from None
        text = re.sub(r"(?m)^version:\s*\d+\s*$", f"version: {version}", source, count=1)
        target.write_text(text, encoding="utf-8")
        return target
    folder = root / group / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "v1.yaml"
    fields = {"name": name, "description": json.dumps(description)}
    if kind == "script":
        target.write_text(SCRIPT_TEMPLATE.format(**fields), encoding="utf-8")
        code = SCRIPT_CODE.format(name=name, summary=description.replace('"""', "'"))
        (folder / f"{name}.py").write_text(code, encoding="utf-8")
    else:
        target.write_text(LLM_TEMPLATE.format(**fields), encoding="utf-8")
    return target
