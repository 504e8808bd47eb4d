"""Conditional text generation: `genloom condition train|generate|eval`.

A small character Transformer LM is made conditional in one of two ways, both trained by the
same loop on the same data:

- "cln": every norm is a Conditional LayerNorm (kexue.fm 7124, `genloom.nn.cln`); the
  condition is a label (a learned embedding) or any vector a user supplies per text;
- "prefix": the baseline, a plain LM whose text starts with one extra token naming the label.

"plain" is the unconditioned LM of the same shape, used to score the samples' perplexity, and
"judge" the independent character-CNN classifier (`genloom.models.judge`) that checks whether a
sample carries the requested label.

The package: `config` (the generator's shape, the model directory), `data` (corpora and user
files as splits), `train` (generators and judge through `train.fit`), `sample` (conditions,
nucleus and guided sampling, NLL under the plain LM), `evaluate` (controllability, copies, the
table), `cli` (the command).
"""

from genloom.tasks.condition.config import GENERATORS, KINDS, META_FILE, LMSpec, build_lm, load_model, read_meta
from genloom.tasks.condition.data import ConditionData, Split, load_data, load_source
from genloom.tasks.condition.evaluate import (CopyIndex, Scorers, controllability, evaluate_generator, format_table,
                                              make_scorers, reference_figures)
from genloom.tasks.condition.sample import condition_for, generate, mean_nll, other_conditions, resolve_label
from genloom.tasks.condition.train import lm_loss, output_directory, train_generator, train_judge

__all__ = [
    "GENERATORS", "KINDS", "META_FILE", "LMSpec", "build_lm", "load_model", "read_meta",
    "ConditionData", "Split", "load_data", "load_source",
    "CopyIndex", "Scorers", "controllability", "evaluate_generator", "format_table", "make_scorers",
    "reference_figures",
    "condition_for", "generate", "mean_nll", "other_conditions", "resolve_label",
    "lm_loss", "output_directory", "train_generator", "train_judge",
]
