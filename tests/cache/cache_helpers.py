"""Cache test helpers: a label workflow, an embedder whose vectors the test chooses, a labeller."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

LABEL_WORKFLOW = """\
name: label
inputs: {{text: {{type: string}}}}
steps:
  - id: classify
    inputs: {{text: "{{{{ inputs.text }}}}"}}
    llm:
      tier: local
      system: You label things.
      prompt: "{prompt}"
      schema:
        type: object
        properties: {{label: {{enum: {labels}}}}}
        required: [label]
        additionalProperties: false
      max_tokens: 12
{cache}
outputs:
  label: "{{{{ steps.classify.output.label }}}}"
"""


def label_workflow(*, cache: str | None = "true", prompt: str = "Label this: {{ text }}",
                   labels: str = "[spam, ham]") -> str:
    """The workflow text; `cache` is the YAML under `cache:` (already indented by 8), 'true' for
    `cache: true` (the default here: caching is opt-in), or None for no `cache:` key at all."""
    if cache is None:
        block = ""
    elif cache == "true":
        block = "      cache: true\n"
    else:
        block = f"      cache:\n{cache}"
    return LABEL_WORKFLOW.format(prompt=prompt, labels=labels, cache=block)


class VectorEmbedder:
    """Returns the vector the test gave for each text (never normalised: the test controls cosines)."""

    name = "vectors"

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.seen: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def labeller(labels: dict[str, str]) -> Callable[[Any], dict[str, str]]:
    """A fake-provider responder answering from the text at the end of the prompt."""

    def respond(request: Any) -> dict[str, str]:
        text = request.messages[-1]["content"].split(": ", 1)[1]
        return {"label": labels[text]}

    return respond
