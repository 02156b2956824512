from __future__ import annotations

import pytest

from engine.config import load_config
from engine.errors import ConfigError, SpecError
from engine.spec import load_workflow


def test_defaults_give_the_bundled_local_tier(engine_home):
    config = load_config()
    assert [e.model for e in config.chain("local")] == ["llamacpp:smollm2"]
    with pytest.raises(ConfigError, match=r"unknown tier 'gold' \(known: local\)"):
        config.chain("gold")


def test_later_files_override_tier_by_tier(engine_home, tmp_path):
    (engine_home.parent / "home" / "engine.yaml").write_text(
        "tiers:\n  premium:\n    - model: fake:user\n  standard:\n    - model: fake:user-std\n")
    (engine_home / "engine.yaml").write_text("tiers:\n  premium:\n    - model: fake:cwd\n")
    beside = tmp_path / "wf"
    beside.mkdir()
    (beside / "engine.yaml").write_text("store: runs.db\ntiers:\n  standard:\n    - model: fake:beside\n")
    config = load_config(beside)
    assert config.chain("premium")[0].model == "fake:cwd"
    assert config.chain("standard")[0].model == "fake:beside"
    assert config.chain("local")[0].model == "llamacpp:smollm2"
    assert config.store_path() == beside / "runs.db"  # relative to the file that says it
    assert len(config.sources) == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("tiers:\n  premium:\n    - model: nope:x\n",
         "engine.yaml:3:7: tiers.premium[0].model: unknown provider 'nope' (known: "),
        ("tiers:\n  premium:\n    - modl: fake:x\n", "engine.yaml:3:7: tiers.premium[0].modl: unknown key 'modl'"),
        ("tiers:\n  premium:\n    - model: nocolon\n", "must be 'provider:model'"),
        ("tiers: [\n", "engine.yaml:2:1: YAML syntax error"),
    ],
)
def test_config_errors_name_file_line_and_field(engine_home, text, message):
    (engine_home / "engine.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert message in str(info.value)


def test_workflow_tier_overrides_are_checked(engine_home):
    path = engine_home / "wf.yaml"
    path.write_text(
        "name: w\nsteps:\n  - id: a\n    llm: {tier: mine, prompt: hi, schema: {type: string}, max_tokens: 3}\n"
        "tiers:\n  mine:\n    - model: nope:x\n")
    with pytest.raises(SpecError, match=r"wf.yaml:7:7: tiers.mine\[0\].model: unknown provider 'nope'"):
        load_workflow(path)
    path.write_text(path.read_text().replace("nope:x", "fake:x"))
    assert load_workflow(path).config.chain("mine")[0].model == "fake:x"
