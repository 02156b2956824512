"""Test support, not part of the engine: nothing in `engine/` outside this package imports it, and
it is left out of the built wheel (`pyproject.toml`). The tests and the benchmarks under
`examples/benchmarks` import it from a checkout.

    batch_servers.py   in-process HTTP servers speaking OpenAI's and Anthropic's wire formats,
                       batch APIs included (the provider-batch tests and benchmark)
"""
