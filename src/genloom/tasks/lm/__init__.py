"""The language-model tasks: `genloom generate` (continue prompts with any genloom or Hugging Face
causal LM), `genloom continue` (continue a prompt cut mid-word, with token healing) and the
builder of the Chinese large-vocabulary LM they are shown on.

- `load.py`: a `--model` argument -> (Decodable, tokenizer), for every genloom family
  (`genloom.models.io.MODEL_TYPES`) and any Hugging Face causal LM;
- `generate.py` / `continue_.py`: what each command does with the parsed flags;
- `cli.py`: both commands' parsers and the flag checks made before a model is loaded;
- `zh_lm.py`: the 32k-BPE Chinese LM (`benchmarks/build_zh_lm.py` runs it);
- `pretrain_data.py` / `pretrain.py` / `pretrain_cli.py`: `genloom lm pretrain`, genloom-zh-base,
  the Chinese base LM pre-trained on all the Chinese training text on hand (`make zh-base`).
"""
