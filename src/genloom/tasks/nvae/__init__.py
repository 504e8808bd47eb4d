"""`genloom nvae train|eval|sample`: NVAE (or the plain VAE baseline) on images.

- `config`: `NVAETrainConfig`, the presets, `make_model` (the model a run builds for its data);
- `train`: `train(cfg, run_dir)` through `genloom.train.fit` (Adamax, lr and KL warm-up over the
  fraction of a step or wall-time budget, NaN-skipping), writing the run and its model/;
- `evaluate`: importance-weighted NLL; `sample`: PNG grids of samples and reconstructions;
- `cli`: the sub-commands.
"""
