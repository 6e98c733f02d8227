"""The WAV that moviepy 1.0.3 writes, replayed on PCM already in memory.

The public baseline extracts audio with `VideoFileClip(path).audio.write_audiofile`
(moviepy 1.0.3). Its reader has quirks that shape the baseline's images: the
output is cut or padded to the container duration, a buffer refill keeps one
sample too many (a one-sample shift per 200,000 samples), a buffer that the
audio cannot fill is indexed backwards, and samples past the audio's end repeat
the reader's buffers. This module is a line-by-line port of the reader's
`get_frame` / `buffer_around` / `read_chunk` and of `iter_chunks` +
`to_soundarray(quantize=True)`, reading from an array instead of a pipe, so the
`baseline` mel mode matches the baseline on every clip, those included.
"""

from __future__ import annotations

import numpy as np

RATE = 44100  # moviepy's default audio fps
READER_BUFFER = 200000  # VideoFileClip's audio_buffersize
WRITER_CHUNK = 2000  # write_audiofile's buffersize
QUANTIZED_MAX = int(0.99 * 2**15)  # what ±0.99 becomes in int16 (truncated)


class _Reader:
    """moviepy 1.0.3 FFMPEG_AudioReader with the ffmpeg pipe replaced by an array."""

    def __init__(self, pcm: np.ndarray, duration: float) -> None:
        # int16 [n, 2]; each chunk is scaled as it is read, as moviepy's read_chunk does (a float64
        # copy of the whole clip would take 4x its PCM: ~420 MB for 600 s).
        self.pcm = pcm
        self.duration = duration
        self.nframes = int(RATE * duration)
        self.buffersize = min(self.nframes + 1, READER_BUFFER)
        self.buffer: np.ndarray | None = None
        self.buffer_startframe = 1
        self.pos = 0  # logical position, as moviepy counts it
        self.pipe = 0  # samples actually consumed from the "pipe"
        self.buffer_around(1)

    def read_chunk(self, chunksize: float) -> np.ndarray:
        chunksize = round(chunksize)
        result = self.pcm[self.pipe : self.pipe + chunksize].astype(np.float64) / 2**15
        self.pipe += len(result)
        self.pos = self.pos + chunksize
        return result

    def seek(self, pos: int) -> None:
        if pos < self.pos or pos > self.pos + 1000000:
            self.pipe = self.pos = int(pos)  # moviepy restarts ffmpeg at that time
        elif pos > self.pos:
            self.pipe += min(pos - self.pos, max(len(self.pcm) - self.pipe, 0))
        self.pos = pos

    def buffer_around(self, framenumber: int) -> None:
        new_bufferstart = max(0, framenumber - self.buffersize // 2)
        if self.buffer is not None:
            current_f_end = self.buffer_startframe + self.buffersize
            if new_bufferstart < current_f_end < new_bufferstart + self.buffersize:
                conserved = current_f_end - new_bufferstart + 1  # one too many: the shift
                array = self.read_chunk(self.buffersize - conserved)
                self.buffer = np.vstack([self.buffer[-conserved:], array])
            else:
                self.seek(new_bufferstart)
                self.buffer = self.read_chunk(self.buffersize)
        else:
            self.seek(new_bufferstart)
            self.buffer = self.read_chunk(self.buffersize)
        self.buffer_startframe = new_bufferstart

    def get_frame(self, tt: np.ndarray) -> np.ndarray:
        in_time = (tt >= 0) & (tt < self.duration)
        frames = np.round(RATE * tt).astype(int)[in_time]
        fr_min, fr_max = frames.min(), frames.max()
        if not 0 <= fr_min - self.buffer_startframe < len(self.buffer):
            self.buffer_around(fr_min)
        elif not 0 <= fr_max - self.buffer_startframe < len(self.buffer):
            self.buffer_around(fr_max)
        result = np.zeros((len(tt), 2))
        indices = frames - self.buffer_startframe
        if len(self.buffer) < self.buffersize // 2:
            indices = indices - (self.buffersize // 2 - len(self.buffer) + 1)
        try:
            result[in_time] = self.buffer[indices]
        except IndexError:  # moviepy warns and repeats the buffer's last frame
            indices[indices >= len(self.buffer)] = len(self.buffer) - 1
            result[in_time] = self.buffer[indices]
        return result


def moviepy_wav(pcm: np.ndarray, duration: float, shortcut: bool = True) -> np.ndarray:
    """int16 [n, 2]: what write_audiofile puts in the WAV, from ffmpeg's 44.1 kHz s16 stereo.

    `duration` is the container's, as ffmpeg prints it (10 ms precision). Raises
    IndexError where moviepy 1.0.3 itself crashes (no samples at all).
    """
    total = int(RATE * duration)
    if total == 0 or len(pcm) == 0:
        raise IndexError("no audio samples to write")
    if shortcut and total < len(pcm) and total + 1 <= READER_BUFFER:
        # One buffer holds the whole clip and the audio fills it: the replay reduces to
        # a cut and the ±0.99 clip (tests check this shortcut against the replay).
        return np.clip(pcm[:total], -QUANTIZED_MAX, QUANTIZED_MAX)
    reader = _Reader(pcm, duration)
    nchunks = total // WRITER_CHUNK + 1
    pospos = np.linspace(0, total, nchunks + 1, endpoint=True, dtype=int)
    chunks = []
    for i in range(nchunks):
        tt = (1.0 / RATE) * np.arange(pospos[i], pospos[i + 1])
        frame = np.maximum(-0.99, np.minimum(0.99, reader.get_frame(tt)))
        chunks.append((2**15 * frame).astype(np.int16))
    return np.vstack(chunks)
