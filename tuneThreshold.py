#! /usr/bin/python
# -*- encoding: utf-8 -*-
"""voxceleb_trainer's metrics file: tuneThresholdfromScore, ComputeErrorRates and ComputeMinDcf
with their arguments and results, and the rest of the metrics core (speakernet/eval/metrics.py,
speakernet/eval/intervals.py)."""
from speakernet.eval.metrics import (ComputeErrorRates, ComputeMinDcf, Metrics, MinDcf,  # noqa: F401
                                     OperatingPoint, compute_eer, compute_metrics, compute_min_dcf,
                                     det_curve, detection_cost, error_rates_at, tuneThresholdfromScore)
from speakernet.eval.intervals import (BOOTSTRAP_METHOD, Intervals, PairedComparison,  # noqa: F401
                                       bootstrap_intervals, bootstrap_replicates, paired_bootstrap)
