"""Model names for ``--model`` and the factories that build them.

Three sources of names: the built-in models below, the named ablations (:data:`VARIANTS`), and
models of other packages. A package makes its model a ``--model`` name by declaring an entry point
in the group ``bgmrec.models`` (in its ``pyproject.toml``)::

    [project.entry-points."bgmrec.models"]
    track-centroid = "my_package.models:TrackCentroid"

or, within one process (a notebook, a test), by :func:`register_model`. Either way the class must
subclass :class:`~bgmrec.models.base.Recommender`; every command (``train``, ``evaluate``, ``bench``,
``serve``) and :func:`~bgmrec.models.base.load_model` then take it like a built-in model, and
:class:`bgmrec.testing.RecommenderContractMixin` tests it against the same contract.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from bgmrec.models.base import ModelConfig, Recommender

ENTRY_POINT_GROUP = "bgmrec.models"  # the entry-point group other packages declare their models in

# name -> "module:Class"; imported lazily so that listing models stays cheap
MODEL_PATHS: dict[str, str] = {
    "random": "bgmrec.models.baselines:RandomRecommender",
    "popularity": "bgmrec.models.baselines:PopularityRecommender",
    "cca": "bgmrec.models.baselines:CCARecommender",
    "twotower-hinge": "bgmrec.models.twotower:TwoTowerHinge",
    "twotower-infonce": "bgmrec.models.twotower:TwoTowerInfoNCE",
    "cmvae": "bgmrec.models.cmvae:CMVAE",
    "deccm": "bgmrec.models.deccm:DecCM",
    "oracle": "bgmrec.models.oracle:Oracle",
}


# named ablations: a model with config overrides (the papers' comparisons, reproducible by name)
VARIANTS: dict[str, tuple[str, dict]] = {
    "cmvae-visual": ("cmvae", {"fusion": "visual"}),
    "cmvae-concat": ("cmvae", {"fusion": "concat"}),
    "cmvae-nocrossgen": ("cmvae", {"cross_generation": False}),
    "cmvae-noprior": ("cmvae", {"track_prior": False}),
    "deccm-noadjust": ("deccm", {"adjustment": False}),
    "deccm-noteacher": ("deccm", {"teacher": False}),
    # CMVAE trained on the uploads, its content mode mixed with the PGC teacher; nothing else of DecCM
    "deccm-teachermix": ("deccm", {"adjustment": False, "alpha": 0.0, "content_share": False}),
}


class PluginWarning(UserWarning):
    """An installed package's model that bgmrec leaves out (its entry point takes a built-in model's name).
    The commands print it as one ``warning: ...`` line, as their own warnings."""


#: models registered in this process by :func:`register_model`: name -> class or "module:Class"
_REGISTERED: dict[str, type[Recommender] | str] = {}


def register_model(name: str, model: type[Recommender] | str) -> None:
    """Make ``model`` (a :class:`Recommender` subclass, or ``"module:Class"`` imported on first use) the
    ``--model`` name ``name`` in this process; ``name`` must be the class's ``name`` (saved runs record
    it). Registering the same model again (or the class an installed entry point of that name
    declares) is allowed; taking a built-in's, an ablation's or another model's name is refused."""
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise ValueError(f"a model name must be a non-empty string without spaces, got {name!r}")
    if isinstance(model, str):
        _check_path(model, f"model {name!r}")
    elif not (isinstance(model, type) and issubclass(model, Recommender)):
        raise ValueError(f"model {name!r}: expected a Recommender subclass or 'module:Class', got {model!r}")
    # a taken name first: the class's name must be the name it is registered as, and is no advice then
    if name in VARIANTS or name in MODEL_PATHS or not _same_model(_REGISTERED.get(name, model), model) or (
            name in plugin_models() and not _same_model(plugin_models()[name], model)):
        raise ValueError(f"model name {name!r} is taken ({_source(name)}); register under another name")
    if isinstance(model, type):
        _check_model(model, name, model.__qualname__)
    _REGISTERED[name] = model


def unregister_model(name: str) -> None:
    """Forget a model :func:`register_model` registered (built-in and entry-point models stay)."""
    if name not in _REGISTERED:
        raise ValueError(f"no model {name!r} was registered with register_model")
    del _REGISTERED[name]


@cache
def plugin_models() -> dict[str, EntryPoint | tuple[EntryPoint, ...]]:
    """name -> entry point of the models other packages declare in the group ``bgmrec.models``.

    Read once per process. An entry point taking a built-in model's or an ablation's name is ignored
    with a warning (the built-in keeps its name); a name that several installed packages declare maps
    to all of their entry points, and using it is refused (:func:`model_class` says which packages).
    """
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in MODEL_PATHS or ep.name in VARIANTS:
            warnings.warn(f"entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r} ({_distribution(ep)}) takes "
                          f"the built-in model name {ep.name!r}: ignored; rename it in that package's entry points",
                          PluginWarning, stacklevel=1)
            continue
        if all(ep.value != seen.value for seen in found.get(ep.name, [])):
            found.setdefault(ep.name, []).append(ep)
    return {name: eps[0] if len(eps) == 1 else tuple(eps) for name, eps in found.items()}


def plugin_modules() -> dict[str, list[str]]:
    """module name -> the names of the models of other packages, and of those registered in this process, whose
    class is in it (where an error raised in a model's own code comes from)."""
    out: dict[str, list[str]] = {}
    for name, target in {**plugin_models(), **_REGISTERED}.items():
        for one in target if isinstance(target, tuple) else (target,):
            out.setdefault(_value(one).split(":")[0], []).append(name)
    return out


def model_names() -> list[str]:
    """Every ``--model`` name: built-in models, ablations, then the models of other packages and those
    registered in this process."""
    extra = [n for n in {**plugin_models(), **_REGISTERED} if n not in MODEL_PATHS]
    return list(MODEL_PATHS) + list(VARIANTS) + extra


def resolve(name: str) -> tuple[str, dict]:
    """``--model`` name -> (base model name, config overrides)."""
    if name in VARIANTS:
        return VARIANTS[name]
    if name not in MODEL_PATHS and name not in _REGISTERED and name not in plugin_models():
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())} (a model of "
                         f"another package is known once that package is installed: see `bgmrec models`)")
    return name, {}


def model_class(name: str) -> type[Recommender]:
    """The class behind a ``--model`` name (imported on first use).

    A model of another package that cannot be used (its module fails to import, it is not a
    :class:`Recommender`, two packages declare its name) raises ValueError naming its entry point.
    """
    base = resolve(name)[0]
    if base in MODEL_PATHS:  # bgmrec's own: an import error here is bgmrec's bug, raised as it is
        return _load(MODEL_PATHS[base])
    target = _REGISTERED.get(base) or plugin_models()[base]
    if isinstance(target, tuple):
        raise ValueError(f"model {base!r} is declared by several installed packages ("
                         + ", ".join(f"{ep.value!r} of {_distribution(ep)}" for ep in target)
                         + "): uninstall all but one")
    where = f"model {base!r} ({_source(base)})"
    try:
        cls = _load(target)
    except Exception as e:  # whatever another package's module raises on import
        raise ValueError(f"{where}: cannot import {_value(target)!r}: {type(e).__name__}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise ValueError(f"{where}: {_value(target)!r} is not a Recommender subclass")
    _check_model(cls, base, _value(target))
    return cls


def build(name: str, spec, overrides: dict | None = None) -> Recommender:
    """An untrained model by ``--model`` name, with ``--set`` overrides applied to its config.

    An override that undoes what makes an ablation (``deccm-noteacher`` with ``teacher=true``) is refused: it
    would be the base model under the ablation's name."""
    from bgmrec.models.base import FeatureSpec

    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"build({name!r}, spec): spec must be a FeatureSpec (FeatureSpec.of(dataset)), "
                        f"got {type(spec).__name__}")
    base, variant = resolve(name)
    cls = model_class(base)
    config = build_config(cls.config_class, {**variant, **(overrides or {})})
    preset = build_config(cls.config_class, variant)
    undone = [k for k in variant if k in (overrides or {}) and getattr(config, k) != getattr(preset, k)]
    if undone:
        raise ValueError(f"{name} is {base} with {', '.join(f'{k}={variant[k]}' for k in undone)}; "
                         f"{', '.join(f'{k}={overrides[k]}' for k in undone)} would undo it: use {base} for that")
    return cls(config, spec)


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One field of a model's config, as ``bgmrec models NAME`` lists it."""

    name: str  # the --set key
    type: str  # its annotation, as written
    default: object  # the model's value (an ablation's own where it sets one)
    comment: str  # the comment beside the field in its config class ("" when it has none)
    fixed: bool  # set by the ablation the name is: --set may not undo it


def config_fields(name: str) -> list[ConfigField]:
    """The config fields of the model ``name`` (built-in, ablation or plugin), in their classes' order, each
    with its default and the comment its config class gives it: what ``--set`` accepts, which a contributor
    otherwise found only from the "no field" error or the source."""
    base, variant = resolve(name)
    config_class = model_class(base).config_class
    preset = build_config(config_class, variant)
    comments: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):  # a subclass's comment wins over its parent's
        comments.update(field_comments(klass))
    return [ConfigField(f.name, _annotation(f.type),
                        getattr(preset, f.name), comments.get(f.name, ""), f.name in variant)
            for f in dataclasses.fields(config_class)]


def _annotation(annotation) -> str:
    """A field's annotation as written: ``int``, ``tuple[int, ...]`` (a string under postponed evaluation)."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation)


def build_config(config_class: type[ModelConfig], overrides: dict) -> ModelConfig:
    """``config_class``'s defaults with ``overrides`` (an ablation's, ``--set``'s) applied and checked."""
    from bgmrec.models.base import with_overrides

    return with_overrides(config_class(), overrides)


def field_comments(klass: type) -> dict[str, str]:
    """The trailing comment of each field line (``name: type = value  # comment``) in ``klass``'s own body; {}
    when its source cannot be read (a class made at run time)."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.cleandoc("\n" + inspect.getsource(klass))  # the body dedented to parse on its own
    except (OSError, TypeError, SyntaxError):  # no source file, a class made at run time, a file that does not parse
        return {}
    out: dict[str, str] = {}
    own = set(getattr(klass, "__annotations__", {}))
    field, line = None, -1  # the field whose comment may go on, on comment-only lines below its own
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in own and tok.start[0] != line:
                field, line = tok.string, tok.start[0]
            elif tok.type == tokenize.COMMENT and field is not None and tok.start[0] in (line, line + 1):
                text = tok.string.lstrip("#").strip()
                if tok.start[0] == line and field not in out:
                    out[field] = text
                elif (tok.start[0] == line + 1 and field in out and tok.line.lstrip().startswith("#")
                      and tok.string.startswith("#  ")):  # indented past its #: a section's heading is not
                    out[field] += " " + text  # a comment-only line right below: the same comment, continued
                else:
                    continue
                line = tok.start[0]
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) and \
                    tok.start[0] != line:
                field = None  # other code: no comment continues past it
    except (tokenize.TokenError, IndentationError):
        return out
    return out


def takes_teacher(cls: type[Recommender], config) -> bool:
    """True when a model of class ``cls`` with ``config`` is given a teacher: the class uses one and the
    config does not turn it off (``teacher=false``, e.g. ``deccm-noteacher``)."""
    return cls.uses_teacher and bool(getattr(config, "teacher", True))


def prepare_teacher(model: Recommender, ds, out, teacher_dir=None, progress: bool = False) -> None:
    """Factory step before ``fit``: give a teacher-guided model its frozen teacher (trained if not given).

    A ``teacher_dir`` for a model that takes no teacher is refused rather than ignored."""
    if teacher_dir is not None and not takes_teacher(type(model), model.config):
        raise ValueError(f"teacher_dir {teacher_dir}: model {model.name!r} with this config takes no teacher")
    if model.uses_teacher:
        from bgmrec.models.deccm import attach_teacher

        attach_teacher(model, ds, out, teacher_dir, progress)


def _load(target: type[Recommender] | str | EntryPoint):
    """The object a target names: "module:Class" strings resolve as entry points do (``Outer.Inner`` too)."""
    if isinstance(target, type):
        return target
    return (target if isinstance(target, EntryPoint) else EntryPoint("", target, ENTRY_POINT_GROUP)).load()


def _value(target: type[Recommender] | str | EntryPoint) -> str:
    """A target as "module:Class"."""
    if isinstance(target, type):
        return f"{target.__module__}:{target.__qualname__}"
    return target.value if isinstance(target, EntryPoint) else target


def _same_model(a, b) -> bool:
    """True when two registry targets (a class, "module:Class" or an entry point) name one class."""
    if isinstance(a, tuple) or isinstance(b, tuple):  # a name several packages declare names no one class
        return False
    if _value(a) == _value(b):
        return True
    try:
        return _load(a) is _load(b)
    except Exception:  # a target that cannot be imported names no class to compare
        return False


def _distribution(ep: EntryPoint) -> str:
    return f"package {ep.dist.name!r}" if ep.dist is not None else "an unknown package"


def _source(name: str) -> str:
    if name in VARIANTS:
        return "an ablation of bgmrec"
    if name in MODEL_PATHS:
        return "a bgmrec model"
    if name in _REGISTERED:
        return "registered with register_model"
    return f"entry point of group {ENTRY_POINT_GROUP!r}"


def _check_model(cls: type[Recommender], name: str, target: str) -> None:
    """Refuse, before anything is built or trained, a class the commands would misuse: a ``name`` other than
    the --model name, a ``config_class`` that is not a proper config (:func:`_check_config`), or methods of the
    contract left abstract or ``score``/``recommend`` overridden (:func:`_check_methods`)."""
    _check_name(cls, name, target)
    _check_config(cls, name)
    _check_methods(cls, name)


def _check_methods(cls: type[Recommender], name: str) -> None:
    # an abstract method left out failed at the first build, after a demo had trained the models before it, in a
    # traceback; an overridden score was never called: every command ranks by the inner product of the encodings
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise ValueError(f"model {name!r}: {cls.__qualname__} does not implement {', '.join(abstract)} (abstract "
                         "methods of the model contract; docs/extending.md)")
    own = [m for m in ("score", "recommend") if getattr(cls, m) is not getattr(Recommender, m)]
    if own:
        raise ValueError(f"model {name!r}: {cls.__qualname__} overrides {' and '.join(own)}, which evaluate, "
                         "recommend, serve and the indexes do not rank by: they rank by the inner product of "
                         "encode_videos and encode_music, so give the scores through those two encodings")


def _check_config(cls: type[Recommender], name: str) -> None:
    # the code of each of bgmrec's classes cls inherits from reads the fields of that class's config_class
    # (TorchRecommender's training loop reads TrainConfig's lr), and the fields of a config class not decorated
    # itself are not dataclass fields: --set cannot give them and a run does not save them
    config = cls.config_class
    for base in reversed(cls.__mro__):
        required = vars(base).get("config_class")
        if base.__module__.partition(".")[0] == "bgmrec" and isinstance(required, type) and not (
                isinstance(config, type) and issubclass(config, required)):
            shown = config.__qualname__ if isinstance(config, type) else repr(config)
            raise ValueError(f"model {name!r}: {cls.__qualname__}.config_class is {shown}, which must be a @dataclass "
                             f"subclassing {required.__qualname__} (the config_class of {base.__qualname__}, whose "
                             "code reads its fields)")
    undecorated = [c for c in config.__mro__ if issubclass(c, ModelConfig) and vars(c).get("__annotations__")
                   and "__dataclass_fields__" not in vars(c)]
    if undecorated:
        raise ValueError(f"model {name!r}: {undecorated[0].__qualname__} is not a dataclass of its own: decorate it "
                         "with @dataclass (else its fields are not config fields: --set cannot give them and runs "
                         "do not save them)")
    # a model is built from its config's defaults (then --set): a field without one failed in build, a traceback
    missing = [f.name for f in dataclasses.fields(config)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"model {name!r}: {config.__qualname__}.{missing[0]} has no default; give every config field "
                         "one (a model is built from the defaults, then --set)")
    # bgmrec's code reads an inherited field as its own class typed it (seed an int, epochs an int)
    try:
        hints = typing.get_type_hints(config)
    except Exception as e:  # noqa: BLE001 - an annotation that cannot be evaluated (a TYPE_CHECKING import)
        raise ValueError(f"model {name!r}: the field types of {config.__qualname__} cannot be read "
                         f"({type(e).__name__}: {e}); import what its annotations name at run time") from None
    for base in config.__mro__[1:]:
        if base.__module__.partition(".")[0] == "bgmrec" and dataclasses.is_dataclass(base):
            for field, kind in typing.get_type_hints(base).items():
                if field in hints and hints[field] != kind:
                    shown = [t.__name__ if isinstance(t, type) else str(t) for t in (hints[field], kind)]
                    raise ValueError(f"model {name!r}: {config.__qualname__}.{field} is {shown[0]}, but "
                                     f"{base.__qualname__}.{field}, which bgmrec's code reads, is {shown[1]}: keep "
                                     "its type")


def _check_name(cls: type[Recommender], name: str, target: str) -> None:
    # a run's config.json records cls.name, and load_model finds the class by it: the two must agree
    if getattr(cls, "name", None) != name:
        raise ValueError(f"model {name!r}: {target} has name {getattr(cls, 'name', None)!r}; its runs are saved "
                         f"under that name, so make it the --model name (or set the class's name to {name!r})")


def _check_path(path: str, what: str) -> None:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what}: expected 'module:Class', got {path!r}")
