"""Provider batch APIs: half price for llm calls that can wait.

    engine run workflow.yaml --inputs items.jsonl --provider-batch [--realtime-retries] [--max-wait 6h]

    apis.py     the batch APIs: OpenAI (Batch API) and Anthropic (Message Batches), one protocol
    ledger.py   durable state: provider batches and every request in them, in the store
    batcher.py  `ProviderBatcher`: which calls wait for a batch; rounds: submit, poll, collect, fall back
    stages.py   stage-wise execution: items run until they wait on a batch; then one round goes out

A batch run (`engine.batch.run_batch`) with `provider_batch=ProviderBatchOptions(...)` runs this
way; calls to models without a batch API (the local tier, OpenAI-compatible servers) stay
real-time in the same run. Answers from a provider batch are priced at the batch rate
(`engine.pricing`, `batch_discount`), shown as source `batch:<tier>` in `engine report`, and held
against budgets from the moment they are submitted.

In-process servers speaking both wire formats, for the tests and the benchmark, are test support:
`engine.testing.batch_servers`.
"""

from engine.provider_batch.apis import BatchAPI, batch_api, register_batch_api, unregister_batch_api
from engine.provider_batch.batcher import BatchState, ProviderBatcher, ProviderBatchOptions, batch_options
from engine.provider_batch.stages import run_stages

__all__ = ["BatchAPI", "BatchState", "ProviderBatchOptions", "ProviderBatcher", "batch_api", "batch_options",
           "register_batch_api",
           "run_stages", "unregister_batch_api"]
