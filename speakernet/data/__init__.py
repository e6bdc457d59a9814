"""Training data: packs of audio, the speaker-balanced sampler, augmentation, the curricula's
data shares, and the pseudo-speaker lists made by clustering."""
