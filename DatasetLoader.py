"""Training data under voxceleb_trainer's file name: the training list (speakernet/core/train_list.py),
the speaker-balanced sampler that plans every batch of an epoch (speakernet/data/sampler.py) and the
dataset whose loader workers read just those crops (speakernet/data/train_data.py). A batch reaches
the trainer as (views, labels, extras, frames): float32 N x V x samples views, the labels, the
batched noise and RIRs, and the sampler's crop lengths."""
from speakernet.core.audio import ChangedAudio, ListError, NonFiniteAudio, PathTable, crop_samples, read_crop  # noqa: F401
from speakernet.data.sampler import (CropRequest, EpochPlan, SpeakerBalancedSampler, add_arguments,  # noqa: F401
                                check_speed_classes, first_fit_slots, speed_factors)
from speakernet.data.train_data import FileReader, TrainDataset, collate_views, training_packs  # noqa: F401
from speakernet.core.train_list import TrainList, read_train_list, speaker_indices  # noqa: F401
