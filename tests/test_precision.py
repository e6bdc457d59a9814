"""--mixedprec on a CPU without bf16 instructions warns (speakernet/run/precision.py)."""
import logging

import pytest
import torch

from speakernet.run import precision
from SpeakerNet import SpeakerNet, Trainer
from models.ResNetSE34L import MainModel

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_OLD = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm bf16 i8mm\n"


def test_bf16_flags_are_read_from_cpuinfo():
    assert precision.BF16_FLAGS & precision.flags_of(X86)
    assert not precision.BF16_FLAGS & precision.flags_of(X86_OLD)
    assert precision.BF16_FLAGS & precision.flags_of(ARM)
    assert precision.flags_of("nothing here") == set()


@pytest.mark.parametrize("bf16, warned", [(False, True), (True, False), (None, False)])
def test_mixed_precision_warns_only_where_the_cpu_lacks_bf16(monkeypatch, caplog, bf16, warned):
    monkeypatch.setattr(precision, "has_bf16", lambda: bf16)
    model = SpeakerNet(MainModel(nOut=8), torch.nn.Identity())
    with caplog.at_level(logging.WARNING):
        Trainer(model, None, None, None, torch.device("cpu"), mixedprec=True)
        Trainer(model, None, None, None, torch.device("cpu"), mixedprec=False)
    messages = [r.getMessage() for r in caplog.records if "bf16 instructions" in r.getMessage()]
    assert len(messages) == int(warned)
