"""Thin ResNet-34 (Chung et al. 2020, "In defence of metric learning", sec. 3.2, Table 1).

The Thin ResNet-34 of [39] (Chung, Huh and Mun 2020, "Delving into VoxCeleb"): ResNet-34's
[3, 4, 6, 3] SE basic blocks at a quarter of the width (16/32/64/128 channels) on a 257-bin
log magnitude spectrogram (25 ms Hamming window, 10 ms step, 512-point FFT, instance norm;
sec. 3.1), frequency averaged out after the last stage, then SAP (the paper's choice) or ASP.

Strides, chosen to match Table 1's cost (the row's 0.99 GMACs for 2 s) with [39]'s layout:
- a 7x7 stem with stride (2, 1) and a 3x3 max-pool with stride (2, 1): the 257 frequency bins
  are quartered before the first stage while time keeps its 10 ms resolution;
- stage strides 1, 2, 2, 2 (frequency and time), as in a standard ResNet.
With nOut 512 and SAP: 1,437,078 parameters (Table 1: 1.4 M) and 0.996 GMACs for a 2-second
input of 32,240 samples, i.e. 202 centred frames (Table 1: 0.99 G): about 0.18, 0.23, 0.37
and 0.19 G in stages 1-4, since 257 bins keep the maps large. Fast ResNet-34
(models/ResNetSE34L.py) has the same layers on 40 mels and costs 0.45 G.
"""
from models._frontends import N_FFT, LogSpectrogramFrontend
from models._layers import SEResNet34


class ThinResNet34(SEResNet34):
    channels = (16, 32, 64, 128)      # a quarter of ResNet-34's 64/128/256/512
    stage_strides = (1, (2, 2), (2, 2), (2, 2))
    stem = "strided_maxpool"

    def __init__(self, nOut=512, encoder_type="SAP", log_input=True):
        super().__init__(LogSpectrogramFrontend(log_input=log_input), nOut, encoder_type, N_FFT // 2 + 1)


def MainModel(nOut=512, encoder_type="SAP", log_input=True, **kwargs):
    """Thin ResNet-34; --n_mels does not apply (the input is the 257-bin spectrogram)."""
    return ThinResNet34(nOut=nOut, encoder_type=encoder_type, log_input=log_input)
