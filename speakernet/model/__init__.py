"""A trained model from any source (our checkpoints, wespeaker, 3D-Speaker, speechbrain) and the
Python API that embeds and verifies with it."""
