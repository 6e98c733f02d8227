"""Where JPEG faces are decoded (`data.decode`): in the loader's workers or on the GPU.

On the CPU, each DataLoader worker checks and decodes its blocks with simplejpeg
(cache/reader.py): about 5,000 crops of 224 px a second per core, so an av model
eating 10,000 crops/s needs two or three decoding cores per GPU. With `cuda`, the
workers only read and check (xxh3 of the bytes, every crop's header against the
face size) and the batch's crops cross the PCIe bus still compressed, about a
ninth of the pixels' bytes; torchvision decodes them there in one batched call
(nvJPEG). `auto` decodes on the GPU when training runs on CUDA and every shard of
the split stores JPEG faces, and in the workers otherwise. The decoders agree to
within a few grey levels (different IDCT and chroma upsampling), not bit for bit,
so a run's batches depend on where its faces were decoded.
"""

from __future__ import annotations

import functools
import warnings

import simplejpeg
import torch

from avcache.cache import schema
from avcache.cache.codec import crop_ranges
from avcache.cache.reader import Cache, DamagedShardError
from avcache.train.batches import JPEG_BYTES, JPEG_ENDS, JPEG_FROM


def check_decoding(choice: str, fields: tuple[str, ...], cache: Cache, splits: tuple[str, ...],
                   device: torch.device) -> None:  # fmt: skip
    """Refuse `data.decode=cuda` where it cannot work for a model reading `fields`, before a
    run folder is written (a model that reads no faces decodes none)."""
    if schema.FACES in fields:
        for split in splits:
            decode_on_device(choice, device, cache.face_codecs(split))


def decode_on_device(choice: str, device: torch.device, codecs: set[str]) -> bool:
    """Whether the training device decodes the faces of shards stored with `codecs`
    (empty: the model reads no faces). `cuda` where it cannot work is refused."""
    if choice == "cpu" or not codecs:
        return False
    if choice == "cuda":
        if device.type != "cuda":
            raise ValueError(f"data.decode=cuda decodes faces on the training GPU, but training "
                             f"runs on {device.type}: use data.decode=cpu or auto")  # fmt: skip
        if codecs != {"jpeg"}:
            raise ValueError("data.decode=cuda decodes JPEG faces, but shards of this cache "
                             "store them raw (faces.codec raw): use data.decode=cpu or auto, or "
                             "preprocess again with faces.codec=jpeg")  # fmt: skip
    return device.type == "cuda" and codecs == {"jpeg"}


def decode_faces(batch: dict, device: torch.device) -> dict:
    """A loader batch whose faces are JPEG bytes -> the same batch with `faces`, uint8
    [B, K, S, S, 3] on `device`, as the workers would have made them; other batches as
    they are."""
    if JPEG_BYTES not in batch:
        return batch
    batch = dict(batch)
    data, ends, where = batch.pop(JPEG_BYTES), batch.pop(JPEG_ENDS), batch.pop(JPEG_FROM)
    crops = [data[start:stop] for start, stop in crop_ranges(ends.numpy(), 0)]
    try:
        images = _decode(crops, device)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as error:
        raise _decoding_error(crops, where, device, error) from None
    # [B, K, S, S, 3] in memory as the workers make it: the model then sees the same
    # (channels-last) strides, and the same sums, whichever side decoded.
    faces = images.view(*ends.shape, *images.shape[1:]).permute(0, 1, 3, 4, 2)
    batch[schema.FACES] = faces.contiguous()
    return batch


def _decoding_error(crops: list[torch.Tensor], where: list[str], device: torch.device,
                    error: Exception) -> Exception:  # fmt: skip
    """What a failed GPU decode means. The workers checked every crop's bytes and header;
    if the CPU decodes them all, the data is sound and the GPU's decoder is at fault (no
    nvJPEG in this torchvision, a driver error), else the crops were written so."""
    try:
        for crop in crops:
            simplejpeg.decode_jpeg(crop.numpy(), "RGB")
    except ValueError:
        return DamagedShardError(f"faces read from {'; '.join(where)} do not decode on {device} "
                                 f"({error}); "
                                 "run `avcache-inspect CACHE verify --sha256 HASH` against a "
                                 "digest you trust, or preprocess again")  # fmt: skip
    return ValueError(f"{device} could not decode JPEG faces that decode on the CPU "
                      f"({error}); train with data.decode=cpu")  # fmt: skip


def _decode(crops: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """[N, 3, S, S] uint8 on `device` from N JPEG crops of one size.

    torchvision's batched CUDA decoder allocates its outputs on the caller's stream but
    writes them on a stream of its own, which waits for nothing of the caller's: memory
    that the training stream freed while its kernels are still queued (the previous
    backward) could be handed to the decoder and overwritten under them. So on CUDA the
    decoder is called from a stream of ours whose only work is decoding: its allocations
    come from blocks only decoding used, whose last work is waited for (on that stream
    alone, not on training) before they are handed out again, and the batch crosses to the
    training stream with record_stream, so its memory is not reused before training is
    done with it.
    """
    if device.type != "cuda":
        return _decode_batch(crops, device)
    training, decoding = torch.cuda.current_stream(device), _decode_stream(device)
    decoding.synchronize()  # the previous batch's decode and stack, nothing of training's
    with torch.cuda.stream(decoding):
        images = _decode_batch(crops, device)
    training.wait_stream(decoding)
    images.record_stream(training)
    return images


def _decode_batch(crops: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg  # only where it is used

    with warnings.catch_warnings():
        # torchvision 0.29 points at TorchCodec 0.16 for images; the pinned torchvision's
        # decoder works, and TorchCodec's decode_jpeg takes the same arguments.
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(crops, mode=ImageReadMode.RGB, device=device)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"crops of {len(shapes)} different shapes in one batch")
    return torch.stack(images)


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """One decoding stream per device, for the life of the process."""
    return torch.cuda.Stream(device)
