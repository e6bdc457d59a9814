"""SpeakerNet (encoder + objective) and the trainer: steps, epochs, evaluation, checkpoint state.

The objective contract (what forward gets, the sampler's needs, the hooks and their defaults)
is written once, in loss/_objective.py; SpeakerNet.contract is the objective itself, or for a
plain voxceleb_trainer-style loss its view with the defaults. Objective state kept in
parameters or buffers is saved in checkpoints with the model.

Schedulers return (scheduler, unit): 'iteration' steps after every optimizer step, 'epoch'
after every epoch, 'loss' after every epoch with the epoch's mean training loss (plateau).
"""
import logging
import time

import torch
import torch.nn as nn
from tqdm import tqdm

from speakernet.run import precision
from speakernet.core.checkpoint import restore_rng
from speakernet.eval.extractor import Extractor
from speakernet.run.tracking import Tracker
from loss._objective import ContractDefaults, RunContext, as_contract

log = logging.getLogger(__name__)


class SpeakerNet(nn.Module):
    def __init__(self, encoder, objective):
        super().__init__()
        self.encoder = encoder
        self.objective = objective                 # registered: its state is checkpointed
        # Not registered again (an Objective is its own contract): set past nn.Module.
        object.__setattr__(self, "contract", as_contract(objective))
        self.contract.attach_encoder(encoder)

    def embed(self, views):
        """List of N x V_i x samples tensors -> N x V x D, the one batch shape of the objectives
        (PlainObjective gives voxceleb_trainer-style files N x D when V == 1)."""
        return torch.cat([self.encoder(v.flatten(0, 1)).unflatten(0, v.shape[:2]) for v in views], dim=1)

    def forward(self, views, labels=None):
        # The loss is computed inside forward so DistributedDataParallel sees every parameter.
        if self.contract.takes_views:
            return self.contract(self.embed(views), labels, views=views)
        return self.contract(self.embed(views), labels)


def _to_device(extra, device):
    if extra is None:
        return None
    return {k: v.to(device, non_blocking=True) if v is not None else None for k, v in extra.items()}


class Trainer:
    """One training step, one epoch, embedding extraction and scoring, on any device."""

    def __init__(self, model, optimizer, scheduler, step_unit, device, mixedprec=False,
                 ddp_model=None, is_main=True, augment=None, max_bad_steps=0):
        self.model = model
        self.net = ddp_model or model          # what forward/backward run through
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_unit = step_unit
        self.device = device
        self.is_main = is_main
        self.augment = augment
        self.contract = model.contract
        self.uses_labels = self.contract.needs.labels
        # bf16 needs no loss scaling; fp16 (CUDA) does.
        self.amp_dtype = precision.amp_dtype(device)
        self.mixedprec = mixedprec
        if mixedprec and device.type == "cpu" and precision.has_bf16() is False:
            log.warning("--mixedprec: this CPU has no bf16 instructions (avx512_bf16, amx_bf16), so "
                        "bf16 autocast is emulated and usually slower than float32 here; drop "
                        "--mixedprec on this machine")
        self.scaler = torch.amp.GradScaler(device.type, enabled=mixedprec and device.type == "cuda")
        self.step = 0
        self.tracker = Tracker()               # tracks nothing unless the run sets one
        self.max_bad_steps = max_bad_steps     # non-finite losses skipped per epoch before stopping
        self.run = RunContext()
        # Unscaling the gradients costs a pass over them: only for objectives that look at them.
        self.after_backward = (type(self.contract).on_after_backward
                               is not ContractDefaults.on_after_backward)

    def start_run(self, max_epoch, world_size=1):
        """Tell the objective the run's length (on_train_start), once before the first epoch."""
        self.run = RunContext(max_epoch=max_epoch, step=self.step, world_size=world_size)
        self.contract.on_train_start(self.run)

    def _autocast(self):
        return precision.autocast(self.device, self.mixedprec)()

    def train_epoch(self, loader, epoch, resume=None, after_step=None):
        """Train one epoch; -> {'loss', 'metric', 'utt_per_s', 'data_wait', 'lr', 'steps'} and
        the objective's on_epoch_end diagnostics.

        resume: a mid-epoch checkpoint's {'batch', 'totals', 'rng'} (the loader's sampler was
        told to skip those batches); after_step(batch, totals) is called after every step."""
        self.model.train()
        total = len(loader) if hasattr(loader, "__len__") else None
        self.run.epoch, self.run.batch = epoch, resume["batch"] if resume else 0
        self.run.steps_per_epoch = (total or 0) + self.run.batch
        self.contract.on_epoch_start(epoch)
        totals = {"loss": 0.0, "metric": 0.0, "count": 0, "utterances": 0, "bad_steps": 0, "batch": 0}
        start = last = time.perf_counter()
        wait = 0.0
        batches = iter(loader)
        if resume:
            # After the loader's iterator exists (its creation draws from the torch generator),
            # so the steps that follow draw exactly what they drew in the interrupted run.
            totals.update(resume["totals"])
            restore_rng(resume["rng"])
        bar = tqdm(batches, total=total, desc=f"epoch {epoch}", unit="batch", disable=not self.is_main,
                   dynamic_ncols=True, leave=False)
        for views, labels, extras, frames in bar:
            wait += time.perf_counter() - last
            totals["batch"] += 1
            if self._step(views, labels, extras, frames, totals, epoch):
                if after_step:
                    after_step(totals["batch"], dict(totals))
                elapsed = time.perf_counter() - start
                bar.set_postfix(self._progress(totals, wait, elapsed))
                self.tracker.log_step(self.step, epoch, totals, {
                    "lr": self.optimizer.param_groups[0]["lr"], "data_wait": wait / elapsed,
                    "utt_per_s": totals["utterances"] / elapsed})
            last = time.perf_counter()
        bar.close()
        elapsed = max(time.perf_counter() - start, 1e-9)
        count = max(totals["count"], 1)
        if self.step_unit == "epoch":
            self.scheduler.step()
        elif self.step_unit == "loss":
            self.scheduler.step(totals["loss"] / count)
        stats = {"loss": totals["loss"] / count, "metric": totals["metric"] / count,
                 "utt_per_s": totals["utterances"] / elapsed, "data_wait": wait / elapsed,
                 "lr": self.optimizer.param_groups[0]["lr"], "steps": totals["count"]}
        diagnostics = self.contract.on_epoch_end(epoch) or {}
        if diagnostics and self.is_main:
            log.info("epoch %d: %s", epoch, " ".join(f"{k} {v:.4g}" for k, v in diagnostics.items()))
        return {**stats, **{k: float(v) for k, v in diagnostics.items() if k not in stats}}

    def _step(self, views, labels, extras, frames, totals, epoch):
        """One optimizer step on a batch; False when its loss was not finite and it was skipped."""
        views = [v.to(self.device, non_blocking=True) for v in views]
        labels = labels.to(self.device, non_blocking=True) if self.uses_labels else None
        if self.augment is not None and any(e is not None for e in extras):
            views = self.augment(views, [_to_device(e, self.device) for e in extras])
        self.contract.on_batch_start(frames)
        with self._autocast():
            loss, metric = self.net(views, labels)
        if not torch.isfinite(loss):
            totals["bad_steps"] += 1
            where = f"epoch {epoch}, step {totals['batch']}"
            if totals["bad_steps"] > self.max_bad_steps:
                raise FloatingPointError(f"loss became {loss.item()} at {where}; lower --lr, check "
                                         f"the data, or allow skips with --max_bad_steps")
            log.warning("skipping a step with loss %s at %s (%d of %d allowed)", loss.item(), where,
                        totals["bad_steps"], self.max_bad_steps)
            return False
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.after_backward:
            self.scaler.unscale_(self.optimizer)
            self.contract.on_after_backward([p for p in self.model.parameters() if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.run.step, self.run.batch = self.step, totals["batch"]
        self.contract.on_step_end(self.step)
        if self.step_unit == "iteration":
            self.scheduler.step()
        totals["loss"] += loss.item()
        totals["metric"] += float(metric)
        totals["count"] += 1
        totals["utterances"] += sum(v.shape[0] * v.shape[1] for v in views)
        return True

    @staticmethod
    def _progress(totals, wait, elapsed):
        count = max(totals["count"], 1)
        return {"loss": f"{totals['loss'] / count:.3f}", "metric": f"{totals['metric'] / count:.1f}",
                "utt_s": f"{totals['utterances'] / elapsed:.0f}", "wait": f"{100 * wait / elapsed:.0f}%"}

    def extractor(self):
        """The one embedding path (speakernet/eval/extractor.py) over this model's encoder, with the
        run's device and autocast."""
        self.model.eval()
        return Extractor(self.model.encoder, self.device, self._autocast, show_progress=self.is_main)

    def extract(self, files, lengths, test_path, eval_frames, num_eval, workers, batch_files=None,
                segment=0):
        """Crop embeddings of every file: files x crops x D on the CPU (Extractor.extract_files)."""
        return self.extractor().extract_files(files, lengths, test_path, eval_frames, num_eval, workers,
                                              batch_files, segment)

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
