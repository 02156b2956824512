"""The engine's exceptions: every error we raise derives from `EngineError`.

    EngineError
    ├── UserError                 your workflow, config or input is wrong (CLI exit code 2)
    │   ├── SpecError             a workflow file fails to load; names file:line:column and field
    │   ├── ConfigError           engine.yaml is wrong, or names a tier/provider that does not exist
    │   ├── InputError            run inputs fail the workflow's input schemas
    │   └── ReportError           a report filter is malformed
    ├── RunError                  a run failed (CLI exit code 1)
    │   ├── StoreError            the store (SQLite file, PostgreSQL server) cannot be reached
    │   └── StepError             one step failed; carries the step id
    │       └── LLMStepError      every tier was exhausted; carries every attempt
    │           └── BudgetExceededError   what was left was blocked by a spend cap; names the cap
    └── ProviderError             a provider call failed (mapped once per adapter, `raise ... from`)
        ├── ProviderUnavailableError   5xx, outage, connection error
        ├── RateLimitError             429; carries `retry_after`
        ├── ProviderTimeoutError
        ├── ContextWindowError         prompt + cap does not fit the model
        └── AuthenticationError        bad or missing key: never falls through silently
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Root of every error the engine raises."""


class UserError(EngineError):
    """The user's workflow, configuration or input is wrong."""


class SpecError(UserError):
    """A workflow file failed to load. `problems` lists every (location, field, message)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        lines = [f"{loc}: {field}: {msg}" if field else f"{loc}: {msg}" for loc, field, msg in problems]
        super().__init__("\n".join(lines))


class ConfigError(UserError):
    """engine.yaml is malformed or refers to something that does not exist."""


class InputError(UserError):
    """Run inputs do not match the workflow's declared input schemas."""


class ReportError(UserError):
    """A report filter (time, tag, grouping) is malformed."""


class RunError(EngineError):
    """A workflow run failed."""


class StepError(RunError):
    """A step failed."""

    def __init__(self, step_id: str, message: str):
        self.step_id = step_id
        super().__init__(f"step '{step_id}': {message}")


class LLMStepError(StepError):
    """An llm step exhausted every tier. `attempts` holds one dict per call, in order."""

    def __init__(self, step_id: str, attempts: list[dict[str, Any]]):
        self.attempts = attempts
        summary = "; ".join(
            f"#{i + 1} {a.get('tier')}/{a.get('model')}: {a.get('error') or a.get('outcome')}"
            for i, a in enumerate(attempts)
        )
        super().__init__(step_id, f"no valid output after {len(attempts)} attempt(s): {summary}")


class BudgetExceededError(LLMStepError):
    """Every model left for an llm step would cross a spend cap. `caps` names them."""

    def __init__(self, step_id: str, attempts: list[dict[str, Any]], caps: list[str]):
        self.caps = caps
        super().__init__(step_id, attempts)
        self.args = (f"step '{step_id}': budget exhausted ({'; '.join(caps)}); {self.args[0]}",)

    def __str__(self) -> str:
        return str(self.args[0])


class StoreError(RunError):
    """The store could not be reached or refused a statement (e.g. PostgreSQL restarting)."""


class ProviderError(EngineError):
    """A provider call failed. Adapters translate their SDK's errors into these."""

    def __init__(self, message: str, *, provider: str = "", model: str = ""):
        self.provider = provider
        self.model = model
        super().__init__(message)


class ProviderUnavailableError(ProviderError):
    """The provider is down or unreachable (5xx, connection refused)."""


class RateLimitError(ProviderError):
    """The provider refused the call for rate reasons (HTTP 429)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: str):
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ProviderTimeoutError(ProviderError):
    """The call did not finish in time."""


class ContextWindowError(ProviderError):
    """The prompt plus the token cap does not fit the model's context window."""


class AuthenticationError(ProviderError):
    """The API key is missing or refused. Never a reason to fall through silently."""
