"""What trainSpeakerNet.py and the command-line tools do with a model: --eval, --extract,
--calibrate, --verify, validation during training, pseudo-label rounds, export and profiling."""
