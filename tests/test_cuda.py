"""CUDA paths (benchmarks/gpu_check.sh runs these on a GPU; without one they skip). Their CPU
counterparts are tested elsewhere: device-agnostic steps (test_train_resume), pinned-memory
and non_blocking copies fall back to plain copies on the CPU, and the GradScaler's state is
checkpointed (test_checkpoint)."""
import pytest
import torch

import trainSpeakerNet
from conftest import train_argv
from speakernet.core import checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("flags", [(), ("mixedprec",)], ids=["fp32", "fp16"])
def test_training_on_cuda_resumes_with_its_scaler(corpus, tmp_path, flags):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, device="cuda", max_epoch=1,
                                                            flags=flags)]) == 0
    state = checkpoint.load_file(checkpoint.checkpoint_path(save / "model", 1))
    assert all(v.device.type == "cpu" for v in state["model"].values())       # loadable anywhere
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    if flags:
        assert state["trainer"]["scaler"]["scale"] > 0                       # fp16 loss scaling was on
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, device="cuda", max_epoch=2,
                                                            flags=flags)]) == 0


def test_cuda_and_cpu_embeddings_agree(corpus, tmp_path):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    outputs = {}
    for device in ("cpu", "cuda"):
        outputs[device] = tmp_path / f"{device}.npz"
        argv = train_argv(corpus, save, device=device, extract=outputs[device], nDataLoaderThread=1)
        assert trainSpeakerNet.main([str(a) for a in argv]) == 0
    import numpy as np
    a, b = (np.load(outputs[d])["embeddings"] for d in ("cpu", "cuda"))
    assert np.abs(a - b).max() < 1e-3


def test_a_padded_batch_on_cuda_embeds_each_file_as_alone_on_the_cpu():
    import torch.nn.functional as F
    from models.ResNetSE34L import MainModel
    from models._padded import pad_waveforms, padded_batch

    torch.manual_seed(0)
    model = MainModel(nOut=64).eval()
    waves = [0.1 * torch.randn(int(s * 16000)) for s in (1.0, 4.2, 11.0)]
    with torch.no_grad():
        alone = torch.stack([model(w[None])[0] for w in waves])
        batch, lengths, _ = pad_waveforms([(w[None], i) for i, w in enumerate(waves)])
        model.to("cuda")
        with padded_batch(model, lengths.to("cuda")):
            together = model(batch.to("cuda")).cpu()
    assert F.cosine_similarity(alone, together).min() >= 0.9999
