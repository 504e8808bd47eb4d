"""SPACES extract-then-generate summarization of documents longer than the model's window:
`genloom summarize train|run|eval`.

Pipeline (bojone/SPACES; research notes in shared/reference/seq2seq-cln-spaces.md section 4):

1. split the document into clauses (`convert.split_clauses`, the first `max_clauses`);
2. extract: the DGCNN extractor (`extract`) scores every clause from its frozen sentence
   vector; the clauses above `threshold` (the post's 0.2) are kept, most probable first, as long
   as they fit the window, and, with `fill` (our default), the window is topped up with the next
   most probable clauses; the kept clauses are joined in document order;
3. generate: the UniLM + B/I/O copy model (`genloom.models.unilm.UniLMSeq2Seq`, trained and
   decoded by `seq2seq`) writes the summary from that text by beam search under the copy
   constraint and Sparse Softmax's top-k.

`fill` is a deviation from the post. Its summaries (283 characters on average) took many clauses
and the extraction was its input; with news titles (24 characters) as targets the alignment marks
one or two short clauses per document, so extracting only those would hand the seq2seq far less
text than the window holds. Filling it makes the comparison with "truncate to the window, then
generate" (mode="truncate", the baseline) one of which characters are read, not how many.

Training (`train.train`): the documents' aligned clauses are the extractor's labels; k-fold
cross-prediction gives each training document an extraction made by a fold model that never saw
it; the seq2seq trains on, at random, that predicted extraction or the oracle one (the aligned
clauses first, topped up by the predictions), as the post does; EMA weights are saved as the
model's default weights and used for evaluation. The post fine-tunes a pretrained NEZHA; `train.pretrain`
is our stand-in (the seq2seq's Transformer as a causal char LM on the training documents), used
through `init` (or `pretrain_minutes`). The vocabulary is built from the documents and summaries,
not from the sources, so truncate- and pipeline-mode models of the same data share it (and can
share one pre-training). A trained summarizer is a directory:

    summarize.json   the SummarizeConfig + facts of the run (mean target length, counts)
    seq2seq/         the UniLMSeq2Seq model directory (genloom.models.save; EMA weights default)
    encoder/         the sentence encoder (a genloom bidirectional Transformer directory)
    extractor/       the k DGCNN fold models
    runs/            training runs (metrics.jsonl, curves.png of every fold and the seq2seq)

Modules: `config` (SummarizeConfig), `convert` (clauses, alignment, copy labels), `extract`
(sentence encoder, DGCNN extractor, k-fold cross-prediction), `seq2seq` (batches, losses and
decoding of the UniLM), `pipeline` (clause selection, `Summarizer`), `train`, `evaluate`, `cli`.
"""
