"""Config fields by their annotations: values given on the command line or read from config.json are converted
to the field's type or refused by name, an annotation whose values cannot be checked is refused by name with
what to use instead, and a wrong default is refused whatever the overrides."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pytest

from bgmrec.data.simulate import WorldConfig
from bgmrec.models.base import ModelConfig, config_from_dict, with_overrides
from bgmrec.models.baselines import RandomConfig, RandomRecommender
from bgmrec.models.registry import build, model_class, model_names, register_model, resolve, unregister_model


@dataclass
class ShapedConfig(ModelConfig):
    widths: tuple[int, ...] = (32,)  # any number of ints
    pair: tuple[int, str] = (1, "a")  # one type per item
    names: list[str] = field(default_factory=lambda: ["x"])  # a list
    mode: Literal["fast", "slow"] = "fast"  # one of two words
    level: Literal[1, 2] = 1  # one of two numbers
    cap: float | None = None  # a number, or none


@dataclass
class WrongDefaultConfig(RandomConfig):
    ridge: int = 0.5  # annotated int, its default a fraction


def _error(config_class: type, values: dict) -> str:
    with pytest.raises(ValueError) as e:
        config_from_dict(config_class, values)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_tuples_lists_and_literals_are_converted_from_the_command_line_and_round_trip_through_json():
    config = with_overrides(ShapedConfig(), {"widths": "16,32", "pair": "3,b", "names": "p,q", "mode": "slow",
                                             "level": "2", "cap": "0.5"})
    assert config == ShapedConfig(widths=(16, 32), pair=(3, "b"), names=["p", "q"], mode="slow", level=2, cap=0.5)
    loaded = config_from_dict(ShapedConfig, json.loads(json.dumps(asdict(config))))  # tuples come back as lists
    assert loaded == config and isinstance(loaded.widths, tuple) and isinstance(loaded.pair, tuple)


@pytest.mark.parametrize("values,message", [
    ({"mode": "medium"}, "ShapedConfig.mode: cannot use 'medium' as Literal['fast', 'slow'] (expected one of "
                         "'fast', 'slow')"),  # was accepted as it was
    ({"level": "3"}, "ShapedConfig.level: cannot use '3' as Literal[1, 2] (expected one of 1, 2)"),
    ({"pair": "1,b,c"}, "ShapedConfig.pair: cannot use '1,b,c' as tuple[int, str] (expected 2 items, got 3)"),
    ({"widths": "16,x"}, "ShapedConfig.widths: cannot use '16,x' as tuple[int, ...] (invalid literal for int() "
                         "with base 10: 'x')"),
    ({"widths": 16}, "ShapedConfig.widths: cannot use 16 as tuple[int, ...] (expected a list (comma-separated on "
                     "the command line), got int)"),
    ({"names": [1]}, "ShapedConfig.names: cannot use [1] as list[str] (expected a string, got int 1)"),
    ({"seed": np.float32(0.5)}, "ShapedConfig.seed: cannot use np.float32(0.5) as int (expected an integer)"),
    ({"cap": True}, "ShapedConfig.cap: cannot use True as float | None (expected a number, got bool True)"),
])
def test_a_value_not_of_the_field_s_type_is_refused_by_name(values, message):
    assert _error(ShapedConfig, values) == message


@pytest.mark.parametrize("annotation,default,advice", [
    ("tuple", (32,), "a bare tuple or list does not say its items' type: use tuple[int, ...] (any length), "
                     "tuple[int, str] (one type per item) or list[int]"),  # came back from JSON as a list
    ("list", (32,), "a bare tuple or list does not say its items' type"),  # '16,32' was kept as a string
    ("np.float32", 1.0, "use float, not a numpy type"),  # 'abc' was kept as a string
    ("np.int64", 1, "use int, not a numpy type"),
    ("dict", None, "use bool, int, float, str, Literal[...], tuple[...] or list[...] of those, or any of them | "
                   "None"),
    ("int | str", 1, "use one type, or one type | None"),
    ("list[list[int]]", None, "the items of a tuple or list must be bool, int, float, str or a Literal, not "
                              "list[int]"),
    ("Literal[1.5]", 1.5, "a Literal's options must be bool, int or str values, not 1.5"),
])
def test_an_annotation_whose_values_cannot_be_checked_is_refused_saying_what_to_use(annotation, default, advice):
    config_class = dataclass(type("OddConfig", (ModelConfig,), {
        "__annotations__": {"odd": annotation}, "odd": default, "__module__": __name__}))
    written = {"np.float32": "numpy.float32", "np.int64": "numpy.int64"}.get(annotation, annotation)
    for values in ({}, {"odd": "16,32"}):  # with or without a value for the field
        message = _error(config_class, values)
        assert message.startswith(f"OddConfig.odd: its annotation {written} is not supported: {advice}")


def test_a_wrong_default_is_refused_as_the_default_whatever_the_overrides(tiny_spec, registered_wrong_default):
    # it trained with no --set and failed with any, even seed=0: now the class is refused when the model is built
    for overrides in ({}, {"seed": "0"}, {"ridge": "2"}):
        with pytest.raises(ValueError, match=re.escape("WrongDefaultConfig.ridge: cannot use its default 0.5 as "
                                                       "int (expected an integer)")):
            build("wrong-default", tiny_spec, overrides)
    assert config_from_dict(WrongDefaultConfig, {"ridge": "2"}).ridge == 2  # a config given every bad field


@pytest.fixture
def registered_wrong_default():
    model = type("WrongDefault", (RandomRecommender,), {"name": "wrong-default", "config_class": WrongDefaultConfig})
    register_model("wrong-default", model)
    yield model
    unregister_model("wrong-default")


@pytest.mark.parametrize("name", model_names())
def test_every_built_in_config_builds_and_round_trips_through_json(name):
    base, variant = resolve(name)
    config = with_overrides(model_class(base).config_class(), variant)
    assert config_from_dict(type(config), json.loads(json.dumps(asdict(config)))) == config


def test_the_world_config_round_trips_through_json():
    world = with_overrides(WorldConfig(), {"genre_shares": "0.5,0.5"})
    assert world.genre_shares == (0.5, 0.5)
    assert config_from_dict(WorldConfig, json.loads(json.dumps(asdict(world)))) == world


@dataclass
class NamedConfig(ModelConfig):
    cache: str = "cache"  # a folder's name
    width: int = 0  # a count


@dataclass(kw_only=True)
class RequiredConfig(ModelConfig):
    width: int  # no default: must be given


def test_a_path_given_for_a_string_field_is_taken_as_its_string_and_a_missing_field_is_named(tmp_path):
    from pathlib import Path

    assert config_from_dict(NamedConfig, {"cache": tmp_path / "c"}).cache == str(tmp_path / "c")
    assert with_overrides(NamedConfig(), {"cache": Path("x")}).cache == "x"
    assert _error(RequiredConfig, {}) == "RequiredConfig.width: missing (the field has no default)"
    assert config_from_dict(RequiredConfig, {"width": "3"}).width == 3


@pytest.mark.parametrize(("given", "read"), [("true", True), ("True", True), ("1", True), ("yes", True),
                                             ("YES", True), ("false", False), ("0", False), ("no", False),
                                             ("No", False), (True, True), (0, False)])
def test_a_boolean_field_reads_every_spelling_it_accepts(given, read):
    """--set teacher=yes was accepted and read as False when "yes" was left out of the true words."""
    from bgmrec.models.deccm import DecCMConfig

    assert config_from_dict(DecCMConfig, {"teacher": given}).teacher is read
