"""The EEG foundation model: a transformer encoder over per-channel 1-s patches, pretrained without labels on
every available recording (masked patch reconstruction + InfoNCE), then fine-tuned as the ``eeg_foundation``
classifier of the model registry.

Modules: ``model`` (the encoder), ``masking`` (patch masks, augmented views), ``objectives`` (losses, the
pretraining heads), ``data`` (the corpus over whole recordings, the window sampler), ``pretrain`` (the loop,
checkpoints, encoder files), ``job`` (platform config -> corpus + pretraining; the asset and ``torchrun`` entry).
Imports torch; nothing here imports Dagster.
"""
