"""Article -> title generation (玩转Keras之seq2seq自动生成标题 and its UniLM successor):
`genloom title train|generate|eval` and `genloom baseline`.

Two architectures, one task (`config.ARCHS`):
- "rnn": `genloom.models.rnn_seq2seq.RNNSeq2Seq`, the post's BiLSTM seq2seq with its prior and a
  pointer-generator copy (the default);
- "unilm": `genloom.models.unilm.UniLMSeq2Seq` with the prior and pointer head, the project
  Transformer under the prefix mask, optionally pre-trained as a char LM first.

Modules: `config` (TitleConfig, the model builders), `data` (pairs, tokenizer, batches), `train`,
`infer` (TitleModel: decoding, save / load), `explain` (the
attention picture), `evaluate`, `baselines` (lead-N, best-sentence, the score table), `cli` and
`baseline_cli` (the commands).

A trained title model is a directory: the model directory of `genloom.models.save` under
`model/` (config.json, model.safetensors, model_ema.safetensors, tokenizer), `title.json` (the
resolved `TitleConfig`), and the training run's own files beside them (metrics.jsonl,
curves.png, config.json), plus the eval tables that `eval` writes.
"""
