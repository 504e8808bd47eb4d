"""`genloom search`: text found by search (【搜出来的文本】) with no paired data: keywords to
sentences (CGMH), Gibbs sampling from a masked LM, typo correction; the samplers themselves are in
`genloom.decode.mcmc` / `mcmc_edits`.

- `data.py`: the training sentences (Chinese corpora, stdlib docstrings), the Chinese vocabulary
  with its [MASK] character;
- `models.py`: the shapes, training (genloom.train.lm + `fit`) and loading of the search LMs;
- `backend.py`: a language's models wired as target, slot model and vocabulary (`Backend`);
- `infer.py`: `keywords_search`, `correct_texts` (with `BestEdits`, the steepest-ascent search), `gibbs_texts`
  and their configs;
- `cli.py`: the `genloom search keywords|gibbs|correct|train-models` parser.
"""

from genloom.tasks.search.backend import Backend, load_backend
from genloom.tasks.search.infer import (BestEdits, CorrectConfig, Found, GibbsConfig, KeywordsConfig, correct_texts,
                                        correction_fluency, default_keywords_config, gibbs_texts, han_vocab,
                                        keywords_search)

__all__ = ["Backend", "load_backend", "BestEdits", "CorrectConfig", "Found", "GibbsConfig", "KeywordsConfig", "correct_texts",
           "correction_fluency", "default_keywords_config", "gibbs_texts", "han_vocab", "keywords_search"]
