"""Where a model's code comes from: a short hash of a package's sources, and, for a model that is not
bgmrec's own (a plugin's entry point, or a class registered with ``register_model``), its class, the
distribution that installed it, its version and a hash of its code. Runs record it (``run.json``,
``config.json``), so figures and warnings can say which code made them; bgmrec's own models are
identified by bgmrec's commit and version instead.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from pathlib import Path


def source_digest(root: Path) -> str:
    """A short SHA-256 of the Python sources of a package folder ``root`` (every ``*.py`` under it, with
    its path) or of the module file ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
        h.update(str(path.relative_to(root if root.is_dir() else root.parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def model_package(model: str | type) -> dict | None:
    """Where the code of ``--model`` ``model`` (a name, or the model's class) comes from when it is not
    bgmrec's own (a model of another package, or one registered with ``register_model``): its class, the
    distribution that installed its module and its version (None for code not installed as one) and a hash
    of its sources (None when they cannot be read); None for bgmrec's models, whose code the commit and
    version identify.

    The hash covers every top-level package (or module) that defines a class of the model's class
    hierarchy outside bgmrec: a subclass of another package's model changes with either package."""
    from bgmrec.models.registry import model_class, resolve

    cls = model if isinstance(model, type) else model_class(resolve(model)[0])
    if cls.__module__.split(".")[0] == "bgmrec":
        return None
    tops = sorted({c.__module__.split(".")[0] for c in cls.__mro__} - {"bgmrec", "builtins", "abc", "typing"})
    digests = [_module_digest(top) for top in tops]
    dist = _distribution_of(cls.__module__)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "package": dist and dist.metadata["Name"],
            "version": dist and dist.version,
            "code": None if None in digests else hashlib.sha256("".join(digests).encode()).hexdigest()[:16]}


def describe_package(made: dict | None) -> str:
    """A :func:`model_package` record in words, e.g. ``bgmrec_gated:GatedCMVAE of package 'bgmrec-gated'
    0.1.0, code 0123456789abcdef`` (None: bgmrec's own code)."""
    if not isinstance(made, dict):
        return "bgmrec's own code"
    where = (f"of package {made['package']!r} {made.get('version')}" if made.get("package")
             else "of no installed package")
    return f"{made.get('class')} {where}, code {made.get('code') or 'unreadable'}"


def packages_note(packages: dict[str, dict | None]) -> str:
    """For a report's header line, beside bgmrec's commit: the models of other packages among ``packages``
    (``--model`` name -> its :func:`model_package`, None for bgmrec's own) as
    ``"; models of other packages: NAME is "`` + :func:`describe_package`, one per model; "" when there are none."""
    named = [f"{name} is {describe_package(made)}" for name, made in packages.items() if made is not None]
    return "; models of other packages: " + "; ".join(named) if named else ""


def _module_digest(top: str) -> str | None:
    """A digest of the sources of the top-level package or module ``top`` as imported: :func:`source_digest`
    of each folder of its ``__path__`` (several for a namespace package); else every module's source as
    its loader reads it, none of them run (a package in a zip file), or the module's own file (a script
    run as ``__main__``); None when there is no source to read (a notebook, a compiled module, a file it may
    not read)."""
    module = sys.modules.get(top)
    if module is None:
        return None
    folders = [Path(p) for p in getattr(module, "__path__", [])]
    if folders and all(f.is_dir() for f in folders):
        try:
            digests = "".join(f"{f.name}:{source_digest(f)}" for f in sorted(folders))
        except OSError:  # a source it may not read, a broken link: the code is unreadable, the run still saved
            return None
        return hashlib.sha256(digests.encode()).hexdigest()
    names = [top] + (_submodules(top, list(module.__path__)) if folders else [])
    sources = [_source_of(name) for name in sorted(names)]
    if None in sources:
        return None
    return hashlib.sha256("\0".join(sources).encode()).hexdigest()


def _submodules(package: str, paths: list[str]) -> list[str]:
    """Every module under ``package`` (found at ``paths``), listed without running any of them (only the
    ``__init__`` of a subpackage is imported, to find its modules); ``__main__`` left out."""
    import importlib.util
    import pkgutil

    names = []
    for info in pkgutil.iter_modules(paths, f"{package}."):
        if info.name.endswith(".__main__"):
            continue
        names.append(info.name)
        if info.ispkg:
            try:
                spec = importlib.util.find_spec(info.name)
            except Exception:  # noqa: BLE001 - another package's __init__ failing: its sources are not read
                continue
            names += _submodules(info.name, list(spec.submodule_search_locations or []))
    return names


def _source_of(name: str) -> str | None:
    """The source of module ``name`` as its loader reads it (the module is not run), else from its file."""
    import importlib.util

    try:
        module = sys.modules.get(name)
        spec = module.__spec__ if module is not None else importlib.util.find_spec(name)
        source = spec.loader.get_source(spec.name) if spec is not None and spec.loader is not None else None
        if source is None and getattr(module, "__file__", None):
            source = Path(module.__file__).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - whatever another package's loader raises: no source to hash
        return None
    return source


def _distribution_of(module: str):
    """The installed distribution whose files hold ``module``, or the only one that provides its top-level
    name when it lists no sources (an editable install, whose files stay in its checkout); None otherwise
    (not installed, a checkout shadowing an installed release, a namespace package).

    One distribution can have two metadata folders on ``sys.path``: an editable install of a ``src`` layout
    leaves the build's ``src/NAME.egg-info`` beside the sources, which its path entry puts on ``sys.path``
    too. They count as one provider."""
    from importlib.metadata import distributions

    file = getattr(sys.modules.get(module), "__file__", None)
    names = dict.fromkeys(_top_level_distributions().get(module.split(".")[0], []))  # once per metadata folder
    found = [dist for name in names for dist in distributions(name=name)]
    for dist in found:
        if file is not None and dist.files is not None and Path(file).resolve() in {
                Path(dist.locate_file(f)).resolve() for f in dist.files if f.suffix == ".py"}:
            return dist
    # an editable install lists no sources of its own (they stay in the checkout): the only such provider
    editable = [d for d in found if d.files is None or not any(f.suffix == ".py" for f in d.files)]
    providers = {_canonical(d.metadata["Name"]) for d in found}
    return editable[0] if len(providers) == 1 and editable else None


def _canonical(name: str | None) -> str:
    """A distribution name as PEP 503 compares them (case, and runs of ``-``, ``_``, ``.``, ignored)."""
    return re.sub(r"[-_.]+", "-", name or "").lower()


@functools.cache
def _top_level_distributions() -> dict[str, list[str]]:
    """``importlib.metadata.packages_distributions()``, read once per process (it scans every installed
    distribution)."""
    from importlib.metadata import packages_distributions

    return packages_distributions()
