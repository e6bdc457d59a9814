"""Fast ResNet-34 (Chung et al. 2020, "In defence of metric learning", sec. 3.2, Table 1).

Quarter-width SE-ResNet-34 on 40 log-mels with early strides; SAP or ASP pooling.
1.44 M parameters with nOut 512 and SAP (the paper's Table 1 gives 1.4 M, 0.45 GMACs / 2 s).
"""
from models._frontends import LogMelFrontend
from models._layers import SEResNet34


class FastResNet34(SEResNet34):
    """Quarter width on 40 log-mels; the stem and stage 4 keep time's 10 ms resolution."""
    channels = (16, 32, 64, 128)
    stage_strides = (1, (2, 2), (2, 2), (1, 1))
    stem = "strided"
    # voxceleb_trainer's parameter-name prefixes -> ours (its checkpoints load through this).
    reference_renames = {"torchfb.": "features.melspec.", "sap_linear.": "pool.sap_linear.",
                         "attention": "pool.attention"}

    def __init__(self, nOut=512, encoder_type="SAP", n_mels=40, log_input=True):
        super().__init__(LogMelFrontend(n_mels=n_mels, log_input=log_input), nOut, encoder_type, n_mels)


def MainModel(nOut=512, encoder_type="SAP", n_mels=40, log_input=True, **kwargs):
    return FastResNet34(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels,
                        log_input=log_input)
