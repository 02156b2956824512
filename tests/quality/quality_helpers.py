"""Constants shared by the quality tests."""

WORKFLOW = """\
name: triage
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      escalate: [premium]
      prompt: "Classify: {{ text }}"
      schema:
        type: object
        properties: {intent: {enum: [card, refund, other]}}
        required: [intent]
        additionalProperties: false
      max_tokens: 12
      retries: 0
%s
"""

TRUTH = {"my card has not arrived": "card", "i want my money back": "refund", "hello": "other",
         "card never came": "card", "refund please": "refund", "what is the weather": "other"}
