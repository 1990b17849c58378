"""The run specs: frozen, JSON-ready, checked by field name, and each field the same flag in every command."""
import dataclasses
import json
from pathlib import Path

import pytest

from drfast.common.errors import UsageError, UsageTypeError
from drfast.pipelines.specs import (CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, PlacementSpec, SearchSpec,
                                    TrainSpec, config_of)

SPECS = (CorpusSpec, EncoderSpec, IndexSpec, SearchSpec, TrainSpec, PlacementSpec, OutputSpec)


def test_specs_are_frozen_and_hold_paths_as_strings(tmp_path):
    corpus = CorpusSpec(tmp_path / "beir", cache=tmp_path / "cache")
    assert corpus.data == str(tmp_path / "beir") and corpus.embeddings_cache == tmp_path / "cache" / "embeddings"
    with pytest.raises(dataclasses.FrozenInstanceError):
        corpus.dtype = "float32"
    assert EncoderSpec(Path("m"), Path("q")).query_model == "q"
    assert OutputSpec(tmp_path).path == tmp_path
    with pytest.raises(UsageError, match="^output: required"):
        OutputSpec()


def test_checks_name_the_field():
    for spec, param in ((CorpusSpec(encode_batch_size=0), "encode_batch_size"), (IndexSpec(index_seed=-1), "index_seed"),
                        (IndexSpec(first_pass="int4"), "first_pass"), (SearchSpec(k=0), "k"),
                        (SearchSpec(query_batch_size=0), "query_batch_size"), (TrainSpec(eval_every=-1), "eval_every"),
                        (EncoderSpec(query_max_length=0), "query_max_length"), (PlacementSpec(device="tpu"), "device"),
                        (PlacementSpec(device="cuda:x"), "device"), (PlacementSpec(gpu_memory="-11GB"), "gpu_memory"),
                        (PlacementSpec(shard_index="yes"), "shard_index")):
        with pytest.raises(UsageError) as raised:
            spec.check()
        assert raised.value.param == param, spec
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        PlacementSpec(device=device).check()
    with pytest.raises(UsageTypeError) as raised:
        TrainSpec(also_evaluate_on="pq:8")  # a string is not a sequence of specs
    assert raised.value.param == "also_evaluate_on"


def test_first_pass_kind_is_the_index_argument():
    assert IndexSpec().first_pass_kind is None and IndexSpec(first_pass=None).first_pass_kind is None
    assert IndexSpec(first_pass="int8").first_pass_kind == "int8"


def test_config_of_is_the_specs_fields_flat_and_json_ready(tmp_path):
    config = config_of(CorpusSpec(tmp_path), IndexSpec("pq:8"), TrainSpec(also_evaluate_on=["pq:4"]), seed=3)
    assert config["data"] == str(tmp_path) and config["index"] == "pq:8" and config["also_evaluate_on"] == ["pq:4"]
    assert config["seed"] == 3 and json.loads(json.dumps(config)) == config
    assert set(config) == {f.name for s in (CorpusSpec, IndexSpec, TrainSpec) for f in dataclasses.fields(s)} | {"seed"}


def test_every_spec_field_with_a_help_is_one_flag_of_the_cli():
    from drfast.cli import command_parsers

    actions = {(a.dest, s): a for p in command_parsers().values() for a in p._actions for s in a.option_strings}
    for spec in SPECS:
        for field in dataclasses.fields(spec):
            if "help" not in field.metadata:
                continue
            flag = "--" + field.name.replace("_", "-")
            found = [a for (dest, s), a in actions.items() if s == flag]
            assert found and all(a.dest == field.name for a in found), (spec.__name__, field.name)
            assert all(field.metadata["help"] in a.help for a in found), (spec.__name__, field.name)
