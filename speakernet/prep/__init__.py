"""Dataset preparation behind data_prep.py: synthetic demo data, VoxCeleb/MUSAN/RIR steps, lists and checks."""
