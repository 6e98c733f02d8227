"""Turn uint8 batches into normalised float tensors where the model runs, augmenting whole batches.

Batches cross the process boundary and the PCIe bus as uint8 (a quarter of the
bytes of float32); conversion, normalisation and augmentation run as batched
tensor ops on the training device. Random decisions come from a CPU generator
seeded by (seed, epoch, global batch index) alone (train/engine.py), so a batch
gets the same flips and masks whatever the number of ranks and workers, and
after a resume.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from avcache.cache import schema
from avcache.train.config import AugmentConfig

# ImageNet statistics; the one-channel mel uses their mean, matching timm's summed conv1.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = sum(RGB_MEAN) / 3, sum(RGB_STD) / 3
LIPS_MEAN, LIPS_STD = 0.421, 0.165  # LipForensics' grey mouth crops


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to the device (asynchronously from pinned memory); other values as they are.

    On CUDA the copies run on a stream of their own. The host runs ahead of the GPU, so when
    a batch is sent the previous step's kernels are still queued: on the compute stream the
    copy would wait behind them, here it crosses the bus while they run. The compute stream
    waits for the copy (nothing else), and record_stream keeps each copy's memory from being
    handed out again before the compute stream is done with it.
    """
    if device.type != "cuda":
        return _moved(batch, device)
    compute, copying = torch.cuda.current_stream(device), copy_stream(device)
    with torch.cuda.stream(copying):
        moved = _moved(batch, device)
    compute.wait_stream(copying)
    for value in moved.values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(compute)
    return moved


def _moved(batch: dict, device: torch.device) -> dict:
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


@functools.cache
def copy_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream batches cross to `device` on, one per device for the life of the process."""
    return torch.cuda.Stream(device)


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (a random draw) on `device` without the host waiting for the GPU:
    a copy from pageable memory is synchronous, one from pinned memory is not."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@functools.lru_cache(maxsize=16)
def _channel_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """[1, 1, C, 1, 1] on `device`, built once per device: a tensor made from Python data
    inside the step would be a blocking copy every batch."""
    return torch.tensor(values).view(1, 1, -1, 1, 1).to(device)


def batch_seed(seed: int, epoch: int, batch_index: int) -> int:
    """The seed of all randomness in training on one global batch (augmentation, dropout)."""
    high, low = np.random.SeedSequence([seed, epoch, batch_index]).generate_state(2)
    return int(high) << 32 | int(low)


def _coin(batch_size: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch_size, generator=generator) < probability


def _where(mask: torch.Tensor, flipped: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (images.dim() - 1)
    return torch.where(to_device_async(mask, images.device).view(shape), flipped, images)


def _band_mask(batch: int, length: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """[B, length] True inside one random band of up to `width` per sample."""
    widths = torch.randint(0, width + 1, (batch, 1), generator=generator)
    starts = (torch.rand(batch, 1, generator=generator) * (length - widths + 1)).long()
    positions = torch.arange(length).view(1, -1)
    return (positions >= starts) & (positions < starts + widths)


def prepare_mel(
    mel: torch.Tensor,
    config: AugmentConfig | None,
    generator: torch.Generator | None,
    size: int | None = None,
) -> torch.Tensor:
    """uint8 [B, 256, 256] -> float [B, 1, size, size], normalised, optionally augmented."""
    images = (mel.float().unsqueeze(1) / 255.0 - GREY_MEAN) / GREY_STD
    if size and size != images.shape[-1]:  # a smaller input trains faster (e.g. on a CPU)
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    if config is None:
        return images
    batch, device = images.shape[0], images.device
    images = _where(_coin(batch, config.hflip, generator), images.flip(-1), images)
    images = _where(_coin(batch, config.vflip, generator), images.flip(-2), images)
    if config.time_mask:
        columns = _band_mask(batch, images.shape[-1], config.time_mask, generator)
        images = images.masked_fill(to_device_async(columns, device).view(batch, 1, 1, -1), 0.0)
    if config.freq_mask:
        rows = _band_mask(batch, images.shape[-2], config.freq_mask, generator)
        images = images.masked_fill(to_device_async(rows, device).view(batch, 1, -1, 1), 0.0)
    return images


def prepare_faces(
    faces: torch.Tensor, config: AugmentConfig | None, generator: torch.Generator | None
):
    """uint8 [B, K, S, S, 3] -> float [B, K, 3, S, S], ImageNet-normalised, optionally flipped."""
    mean = _channel_constant(RGB_MEAN, faces.device)
    std = _channel_constant(RGB_STD, faces.device)
    images = (faces.permute(0, 1, 4, 2, 3).float() / 255.0 - mean) / std
    if config is not None:
        images = _where(_coin(images.shape[0], config.hflip, generator), images.flip(-1), images)
    return images


def prepare_lips(lips: torch.Tensor, config: AugmentConfig | None,
                 generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
    """uint8 [B, W, T, S, S] grey mouths -> float [B, W, T, 1, S, S], normalised with
    LipForensics' statistics; a sample's whole sequence flipped left-right at random."""
    images = ((lips.float() / 255.0 - LIPS_MEAN) / LIPS_STD).unsqueeze(3)
    if config is not None:
        images = _where(_coin(images.shape[0], config.hflip, generator), images.flip(-1), images)
    return images


def prepare_track_audio(audio: torch.Tensor) -> torch.Tensor:
    """int16 [B, W, L] -> float [B, W, L] in [-1, 1)."""
    return audio.float() / 32768.0


def evenly_spaced_frames(faces: torch.Tensor, frames: int | None) -> torch.Tensor:
    """`frames` of the K cached frames, spread over the clip (all of them for None)."""
    available = faces.shape[1]
    if frames is None or frames >= available:
        return faces
    # Built on the device itself: no host data to copy.
    picks = torch.linspace(0, available - 1, frames, device=faces.device).round().long()
    return faces.index_select(1, picks)


def prepare(
    batch: dict,
    fields: tuple[str, ...],
    config: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    frames: int | None = None,
    mel_size: int | None = None,
) -> dict:
    """Model inputs from a device batch; `config=None` means evaluation (no augmentation)."""
    inputs = {}
    if schema.MEL in fields:
        inputs[schema.MEL] = prepare_mel(batch[schema.MEL], config, generator, mel_size)
    if schema.FACES in fields:
        faces = evenly_spaced_frames(batch[schema.FACES], frames)
        inputs[schema.FACES] = prepare_faces(faces, config, generator)
    if schema.LIPS in fields:
        inputs[schema.LIPS] = prepare_lips(batch[schema.LIPS], config, generator)
    if schema.TRACK_AUDIO in fields:
        inputs[schema.TRACK_AUDIO] = prepare_track_audio(batch[schema.TRACK_AUDIO])
    for field in AS_READ:
        if field in fields and field in batch:
            inputs[field] = batch[field]
    return inputs


# What a model reads as the cache gives it: where each window's frames end, each window's
# start, and each frame's target (read only for training).
AS_READ = (schema.TRACK_FRAMES_REAL, schema.TRACK_START, schema.FRAME_FAKE)


# The inputs' entry saying which samples were mismatched (bool [B]), for a model whose views
# cannot all see a mismatch (train/models.py EveryView).
MISMATCHED = "mismatched"


def mismatch_faces(inputs: dict, labels: torch.Tensor, share: float,
                   generator: torch.Generator) -> tuple[dict, torch.Tensor]:  # fmt: skip
    """Audio-visual mismatch: a `share` of the batch gets another video's faces beside its own
    mel, and the pair is labelled fake (the voice and the face do not belong together)."""
    faces = inputs[schema.FACES]
    batch = faces.shape[0]
    count = round(share * batch)
    if batch < 2 or count == 0:
        return inputs, labels
    # Drawn on the host, moved without waiting: never read back into Python.
    chosen = torch.randperm(batch, generator=generator)[:count]
    shift = torch.randint(1, batch, (1,), generator=generator)
    chosen = to_device_async(chosen, faces.device)
    donors = (chosen + to_device_async(shift, faces.device)) % batch  # never the sample itself
    faces, labels = faces.clone(), labels.clone()
    faces[chosen] = inputs[schema.FACES][donors]
    labels[chosen] = 1.0
    return {**inputs, schema.FACES: faces, MISMATCHED: marked(inputs, chosen, batch)}, labels


def mismatch_speech(inputs: dict, labels: torch.Tensor, share: float,
                    generator: torch.Generator) -> tuple[dict, torch.Tensor]:  # fmt: skip
    """Sync negatives: a `share` of the batch hears other speech than its lips say, labelled
    fake. Half of them get another clip's audio window, half their own audio shifted by a
    fifth to a half of the window (5 to 12 frames of a 25-frame window): a swapped voice
    and a lag, the two ways lips and speech part."""
    audio = inputs[schema.TRACK_AUDIO]
    batch, length = audio.shape[0], audio.shape[-1]
    count = round(share * batch)
    if batch < 2 or count == 0:
        return inputs, labels
    chosen = torch.randperm(batch, generator=generator)[:count]
    donor_shift = torch.randint(1, batch, (1,), generator=generator)
    lags = torch.randint(length // 5, length // 2 + 1, (count,), generator=generator)
    signs = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
    device = audio.device
    chosen, donor_shift = to_device_async(chosen, device), to_device_async(donor_shift, device)
    lags = to_device_async(lags * signs, device)
    swapped, shifted, lags = chosen[0::2], chosen[1::2], lags[1::2]
    heard, labels = audio.clone(), labels.clone()
    heard[swapped] = audio[(swapped + donor_shift) % batch]  # never the sample itself
    positions = (torch.arange(length, device=device) - lags[:, None]) % length
    own = audio[shifted]
    heard[shifted] = own.gather(-1, positions[:, None, :].expand_as(own))
    labels[chosen] = 1.0
    return {**inputs, schema.TRACK_AUDIO: heard, MISMATCHED: marked(inputs, chosen, batch)}, labels


def marked(inputs: dict, chosen: torch.Tensor, batch: int) -> torch.Tensor:
    """The batch's mismatched samples (bool [B]): those marked before, and `chosen`."""
    mismatched = inputs.get(MISMATCHED)
    if mismatched is None:
        mismatched = torch.zeros(batch, dtype=torch.bool, device=chosen.device)
    return mismatched.index_fill(0, chosen, True)
