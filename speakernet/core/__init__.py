"""What every layer may use: errors, audio reading and constants, atomic writes, option types,
YAML configs, the training-list reader and the checkpoint format."""
