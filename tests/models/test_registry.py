"""What the registry refuses of a model class when it is registered or resolved, before anything is built or
trained: a config class that is not a dataclass of its own or does not subclass the config its bgmrec base class
reads, and a name that is taken or not the class's."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest

from bgmrec.models.base import ModelConfig, Recommender
from bgmrec.models.baselines import RandomConfig, RandomRecommender
from bgmrec.models.neural import TorchRecommender
from bgmrec.models.registry import MODEL_PATHS, model_class, register_model, unregister_model
from bgmrec.train import TrainConfig


class UndecoratedConfig(RandomConfig):  # @dataclass forgotten: ridge is a class attribute, not a field
    ridge: float = 1.0  # penalty


class Undecorated(RandomRecommender):
    name = "undecorated"
    config_class = UndecoratedConfig


class NotAConfig:  # neither a dataclass nor a ModelConfig
    seed = 0


class Unconfigured(RandomRecommender):
    name = "unconfigured"
    config_class = NotAConfig


class TorchWithPlainConfig(TorchRecommender):  # abstract: the registry refuses it before anything builds one
    name = "torch-plain-config"
    config_class = ModelConfig


@dataclass(kw_only=True)
class NoDefaultConfig(RandomConfig):
    ridge: float  # penalty, without a default


class NoDefault(RandomRecommender):
    name = "no-default"
    config_class = NoDefaultConfig


@dataclass
class RetypedConfig(RandomConfig):
    seed: str = "zero"  # an inherited field of another type


class Retyped(RandomRecommender):
    name = "retyped"
    config_class = RetypedConfig


@pytest.fixture
def registered():
    """Names registered by a test, unregistered after it."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_model(name)



def assert_refused_when_registered_and_when_resolved(model, message: str, registered: list[str]) -> None:
    """``model`` refused with ``message`` by register_model, and, registered as 'module:Class' (imported on first
    use), by model_class."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        register_model(model.name, model)
    register_model(model.name, f"{__name__}:{model.__qualname__}")  # imported on first use: refused then
    registered.append(model.name)
    with pytest.raises(ValueError, match=re.escape(message.partition(": ")[2])):
        model_class(model.name)


@pytest.mark.parametrize("model,message", [
    # was: --set ridge=2 said "UndecoratedConfig has no field(s) ['ridge']; known: ['dim', 'seed']"
    (Undecorated, "model 'undecorated': UndecoratedConfig is not a dataclass of its own: decorate it with @dataclass "
                  "(else its fields are not config fields: --set cannot give them and runs do not save them)"),
    # was: trained, then save failed with asdict's TypeError
    (Unconfigured, "model 'unconfigured': Unconfigured.config_class is NotAConfig, which must be a @dataclass "
                   "subclassing ModelConfig (the config_class of Recommender, whose code reads its fields)"),
    # was: a 54-line TypeError traceback from build ("missing 1 required keyword-only argument")
    (NoDefault, "model 'no-default': NoDefaultConfig.ridge has no default; give every config field one (a model is "
                "built from the defaults, then --set)"),
    # was: check_bounds' TypeError "'>=' not supported between 'str' and 'int'"
    (Retyped, "model 'retyped': RetypedConfig.seed is str, but RandomConfig.seed, which bgmrec's code reads, is "
              "int: keep its type"),
    # was: AttributeError 'lr' inside train.py
    (TorchWithPlainConfig, "model 'torch-plain-config': TorchWithPlainConfig.config_class is ModelConfig, which must "
                           "be a @dataclass subclassing TrainConfig (the config_class of TorchRecommender, whose code "
                           "reads its fields)"),
])
def test_a_model_whose_config_class_is_not_a_proper_config_is_refused_naming_the_class_to_fix(model, message,
                                                                                             registered):
    assert_refused_when_registered_and_when_resolved(model, message, registered)


def test_an_undecorated_config_subclass_declaring_no_fields_is_accepted(registered):
    model = type("Plain", (RandomRecommender,), {"name": "plain", "config_class": type("P", (RandomConfig,), {})})
    register_model("plain", model)
    registered.append("plain")
    assert model_class("plain") is model


@pytest.mark.parametrize("base", list(MODEL_PATHS))
def test_a_subclass_of_every_built_in_model_registers(base, registered):
    cls = model_class(base)
    subclass = type(f"My{cls.__name__}", (cls,), {"name": f"my-{base}"})
    register_model(f"my-{base}", subclass)
    registered.append(f"my-{base}")
    assert model_class(f"my-{base}") is subclass


def test_a_taken_name_is_refused_as_taken_before_the_class_s_name_is_compared(registered):
    from bgmrec.models.cmvae import CMVAE

    align = type("CMVAEAlign", (CMVAE,), {"name": "cmvae-align"})
    # was: "model 'cmvae': CMVAEAlign has name 'cmvae-align'; ... (or set the class's name to 'cmvae')", and
    # following that advice led to "model name 'cmvae' is taken"
    with pytest.raises(ValueError, match=r"^model name 'cmvae' is taken \(a bgmrec model\); register under another "
                                         "name$"):
        register_model("cmvae", align)
    with pytest.raises(ValueError, match="has name 'cmvae-align'"):  # a free name still must be the class's
        register_model("align", align)
    register_model("cmvae-align", align)
    registered.append("cmvae-align")
    assert model_class("cmvae-align") is align


def test_a_config_whose_annotations_cannot_be_read_is_refused_in_words(registered):
    # a TYPE_CHECKING import named in an annotation raised NameError out of model_class: bgmrec models crashed
    config = dataclass(type("Hidden", (RandomConfig,), {"__annotations__": {"ridge": "NotImportedAtRunTime"},
                                                        "ridge": 1.0}))
    model = type("Hiding", (RandomRecommender,), {"name": "hiding", "config_class": config})
    with pytest.raises(ValueError, match=r"^model 'hiding': the field types of Hidden cannot be read \(NameError: "):
        register_model("hiding", model)


class Forgetful(Recommender):  # learns, but leaves out what save writes and load_model reads back
    name = "forgetful"

    def fit(self, train, val=None, progress=False):
        self.check_fit_data(train, val)
        self.projection = np.ones((self.spec.music, 2))  # learned, and left out of state_arrays
        return self

    def _encode_videos(self, q):
        return np.zeros((len(q), 2))

    def _encode_music(self, c):
        return np.zeros((len(c), 2))


class BareTorch(TorchRecommender):  # a network whose module, loss and embeddings are not written yet
    name = "bare-torch"
    config_class = TrainConfig


class OwnScore(RandomRecommender):  # scores of its own, which no command calls
    name = "own-score"

    def score(self, q, c):
        return super().score(q, c).T


@pytest.mark.parametrize("model,message", [
    # was: registered, listed, trained; a demo trained every model before it, then a 56-line TypeError traceback
    (BareTorch, "model 'bare-torch': BareTorch does not implement build_module, music_embedding, training_loss, "
                "video_embedding (abstract methods of the model contract; docs/extending.md)"),
    # was: saved without its state, loaded back scoring by its initialisation (R@10 0.511 fitted, 0.054 reloaded)
    (Forgetful, "model 'forgetful': Forgetful does not implement load_state_arrays, state_arrays (abstract "
                "methods of the model contract; docs/extending.md)"),
    # was: evaluate, recommend and serve ranked by the encodings, ignoring it, without a word
    (OwnScore, "model 'own-score': OwnScore overrides score, which evaluate, recommend, serve and the indexes do not "
               "rank by: they rank by the inner product of encode_videos and encode_music, so give the scores through "
               "those two encodings"),
])
def test_a_model_leaving_the_contract_abstract_or_scoring_its_own_way_is_refused(model, message, registered):
    assert_refused_when_registered_and_when_resolved(model, message, registered)


def test_demo_and_bench_refuse_an_unusable_model_before_anything_is_simulated(registered, tmp_path, capsys):
    from bgmrec.cli import main

    register_model("forgetful", f"{__name__}:Forgetful")
    registered.append("forgetful")
    assert main(["demo", "--scale", "tiny", "--out", str(tmp_path / "d"), "--models", "random,forgetful"]) == 2
    assert "Forgetful does not implement load_state_arrays" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    assert main(["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "random,forgetful",
                 "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b.md")]) == 2
    assert "Forgetful does not implement load_state_arrays" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
