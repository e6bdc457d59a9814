#! /usr/bin/python
# -*- encoding: utf-8 -*-
"""voxceleb_trainer's metrics file: tuneThresholdfromScore, ComputeErrorRates and ComputeMinDcf
with their arguments and results, and the rest of the metrics core (speakernet/eval/metrics.py)."""
from speakernet.eval.metrics import (BOOTSTRAP_METHOD, ComputeErrorRates, ComputeMinDcf, Intervals, Metrics,  # noqa: F401
                                MinDcf, OperatingPoint, PairedComparison, bootstrap_intervals,
                                bootstrap_replicates, compute_eer, compute_metrics, compute_min_dcf,
                                det_curve, detection_cost, error_rates_at, paired_bootstrap,
                                tuneThresholdfromScore)
