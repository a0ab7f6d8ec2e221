"""The example model passes bgmrec's recommender contract (run with pytest once the package is installed)."""

from bgmrec.testing import RecommenderContractMixin


class TestAudioRidge(RecommenderContractMixin):
    model_name = "audio-ridge"  # the entry point of pyproject.toml
