"""Evaluation: crops and embeddings, trial lists, scores and score normalisation, metrics with
intervals, calibration, plots and result files, and the ablation table."""
