"""Keys declared by the parts (utilities.settings): bounds and choices checked from the declaration, each part's
keys in the schema once, and the criterion's defaults read from the parts instead of written again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from config import FIELDS, Config, config_from_dict
from config.schema import PARTS
from criteria import CRITERION_DEFAULTS, OTHER_PARTS_DEFAULTS, DADACriterion, DADASettings, build_criterion
from criteria.proxy_losses import ProxyAnchorLoss
from utilities.errors import UserError
from utilities.settings import bounds_text, check_settings, defaults_of, setting


@dataclass
class Example:
    count: int = setting(1, "a count", at_least=1)
    share: float = setting(0.5, "a share", more_than=0.0, less_than=1.0, what="a fraction")
    size: float = setting(0.0, "a size", at_least=0)
    mode: str = setting("a", "a mode", lambda: ("a", "b"))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"count": 0}, "key 'count' must be at least 1; got 0"),
        ({"share": 1.0}, "key 'share' must be a fraction in (0, 1); got 1.0"),
        ({"share": 0.0}, "key 'share' must be a fraction in (0, 1); got 0.0"),
        ({"size": -0.5}, "key 'size' must not be negative; got -0.5"),
        ({"mode": "c"}, "key 'mode' must be one of a, b; got 'c'"),
    ],
)
def test_bounds_and_choices_come_from_the_declaration(values, message) -> None:
    with pytest.raises(UserError) as caught:
        check_settings(Example, SimpleNamespace(**{**defaults_of(Example), **values}))
    assert str(caught.value) == message
    check_settings(Example, Example())  # the defaults are valid


def test_bounds_text() -> None:
    fields = {f.name: f for f in dataclasses.fields(Example)}
    assert [bounds_text(fields[name]) for name in ("count", "share", "size", "mode")] == [
        "at least 1",
        "in (0, 1)",
        "not negative",
        "",
    ]


def test_every_key_belongs_to_exactly_one_part_or_one_loss_entry() -> None:
    from criteria.registry import LOSS_KEYS

    owners: dict[str, list[str]] = {}
    for part, _ in PARTS:
        for f in dataclasses.fields(part):
            owners.setdefault(f.name, []).append(part.__name__)
    for name in LOSS_KEYS:
        owners.setdefault(name, []).append("loss registry")
    assert {name: parts for name, parts in owners.items() if len(parts) > 1} == {}
    assert set(owners) == set(FIELDS)


def test_the_criterion_defaults_are_the_schema_defaults() -> None:
    schema = Config()
    assert {key: getattr(schema, key) for key in CRITERION_DEFAULTS} == CRITERION_DEFAULTS
    assert set(OTHER_PARTS_DEFAULTS) == {"embed_dim", "samples_per_class", "seed"}


def test_build_criterion_hands_every_dada_key_to_the_criterion() -> None:
    """No key is copied by hand: a changed value of each DADA key reaches the criterion's settings."""
    changed = {
        "proxy_loss_weight": 0.5,
        "adv_weight": 2.0,
        "class_ratio": 0.2,
        "discrepancy_weight": 0.25,
        "discrepancy": "l1",
        "normalize_features": False,
        "mix_mode": "individual",
        "shift_scale": 0.5,
        "mix_alpha": 2.0,
        "mix_beta": 3.0,
        "pos_class_mix": True,
        "domain_hidden": 8,
        "domain_out_bn": True,
        "class_hidden1": 8,
        "class_hidden2": 6,
        "class_out_bn": True,
        "dropout": 0.25,
        "activation": "leaky_relu",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(DADASettings)}
    cfg = SimpleNamespace(**{**CRITERION_DEFAULTS, "embed_dim": 8, **changed})
    criterion = build_criterion(cfg, 5)
    assert dataclasses.asdict(criterion.settings) == changed


def test_dada_criterion_checks_its_settings_with_the_same_check() -> None:
    with pytest.raises(UserError, match="key 'dropout' must be in"):
        DADACriterion(ProxyAnchorLoss(), 5, 8, DADASettings(dropout=1.0))


def test_schedule_and_dataset_entries_check_their_own_keys() -> None:
    with pytest.raises(UserError, match="key 'lr_step' must be at least 1 with scheduler: step"):
        config_from_dict({"scheduler": "step", "lr_step": 0})
    assert config_from_dict({"scheduler": "multi", "lr_step": 0}).lr_step == 0  # only step reads it
    with pytest.raises(UserError, match="key 'synthetic_classes' must be at least 4"):
        config_from_dict({"dataset": "synthetic", "synthetic_classes": 2})


def test_the_inputs_a_builder_declares_are_keys_of_the_schema_with_their_schema_types() -> None:
    """A builder that reads keys of several parts declares them in a Protocol: each name there is a key, typed
    as the part that owns it declares it (a misspelt or retyped key fails here)."""
    import typing

    from config.schema import KEY_TYPES
    from criteria.registry import LossInputs
    from criteria.settings import CriterionInputs
    from datasets.build import DatasetInputs
    from engine.data import TrainingDataInputs
    from engine.inference import InferenceInputs, PreprocessingInputs

    protocols = (LossInputs, CriterionInputs, DatasetInputs, TrainingDataInputs, PreprocessingInputs, InferenceInputs)
    for protocol in protocols:
        hints = typing.get_type_hints(protocol)
        assert hints and {name: KEY_TYPES.get(name) for name in hints} == hints, protocol.__name__


def test_coerce_applies_the_parser_a_key_declares(monkeypatch) -> None:
    """The configuration converts a list key's values with the parser declared on the key (`setting(parse=)`),
    knowing no key by name: metric names in every spelling, and any other key that declares one."""
    from config import schema

    assert schema.coerce("evaluation_metrics", "['e_recall@1', 'e_recall@2']") == ["recall@1", "recall@2"]

    @dataclass
    class Tags:
        tags: list[str] = setting(["a"], "some tags", parse=lambda values: [v.upper() for v in values])

    (tags,) = dataclasses.fields(Tags)
    monkeypatch.setitem(schema.FIELDS, "tags", tags)
    monkeypatch.setitem(schema.KEY_TYPES, "tags", list[str])
    assert schema.coerce("tags", ["x", "y"]) == ["X", "Y"] and schema.coerce("tags", "z") == ["Z"]
