"""audio.trim_silence_db: a clip's leading and trailing silence never reaches the mel image,
so a data set whose fakes start silent loses that cue (the audit's `mel_lead_quiet`)."""

from __future__ import annotations

import numpy as np
import pytest

from avcache.common.config import config_hash
from avcache.preprocess.audio import MEL_MODES, mel_image, trim_silence
from avcache.preprocess.config import AudioConfig, PreprocessConfig
from avcache.preprocess.media import ffmpeg_binary, read_audio
from tests.media import ffmpeg, speech_wav


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 2.4 s clip whose real speech starts 0.8 s in (silence before it), and the same
    speech from the start."""
    root = tmp_path_factory.mktemp("trim")
    late, prompt = root / "late.mp4", root / "prompt.mp4"
    for path, delay in ((late, 800), (prompt, 0)):
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25:duration=2.4", "-i",
               str(speech_wav()), "-filter_complex",
               f"[1:a]atrim=0:1.5,adelay={delay}:all=1,apad=whole_dur=2.4[a]", "-map", "0:v",
               "-map", "[a]", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac",
               "-t", "2.4", str(path))  # fmt: skip
    return late, prompt


def decoded(path, mode):
    return read_audio(path, ffmpeg_binary(), mode.rate, mode.channels, 600.0)


def quiet_columns(mel: np.ndarray) -> int:
    """Leading columns of the image that are (nearly) black: silence, after MINMAX."""
    loud = np.flatnonzero(mel.mean(axis=0) >= 16)
    return int(loud[0]) if loud.size else mel.shape[1]


@pytest.mark.parametrize("mode_name", ["baseline", "padded"])
def test_a_silent_start_is_cut_before_the_mel_image(clips, mode_name):
    late, prompt = clips
    mode = MEL_MODES[mode_name]
    info, pcm = decoded(late, mode)
    kept = mel_image(pcm, info, AudioConfig(mode=mode_name))
    trimmed = mel_image(pcm, info, AudioConfig(mode=mode_name, trim_silence_db=40.0))
    as_spoken = mel_image(*reversed(decoded(prompt, mode)), AudioConfig(mode=mode_name))
    # 0.8 s of 2.4 s silent: about a third of the columns, until trimmed; then the image
    # starts as the same speech does when nothing precedes it
    assert quiet_columns(kept) >= 60
    assert quiet_columns(trimmed) <= quiet_columns(as_spoken) + 4, quiet_columns(as_spoken)


def test_trimming_keeps_the_sound_and_its_length(clips):
    late, _ = clips
    mode = MEL_MODES["padded"]
    info, pcm = decoded(late, mode)
    cut, cut_info = trim_silence(pcm, info, mode.rate, mode.channels, 40.0)
    assert 1.2 < cut_info.duration < info.duration - 0.7, cut_info.duration
    assert len(cut) == round(cut_info.duration * mode.rate) * mode.channels * 2
    samples = np.frombuffer(pcm, np.int16)
    assert np.abs(np.frombuffer(cut, np.int16)).max() == np.abs(samples).max()
    silent = b"\0" * len(pcm)
    assert trim_silence(silent, info, mode.rate, mode.channels, 40.0) == (silent, info)


def test_trimming_is_off_by_default_and_in_the_config_hash():
    assert AudioConfig().trim_silence_db == 0.0
    trimmed = PreprocessConfig()
    trimmed.audio.trim_silence_db = 40.0
    assert config_hash(trimmed) != config_hash(PreprocessConfig())


def test_the_audit_sees_the_silent_start_leave_the_mel_image_once_trimmed(tmp_path):
    """Fakes that start 0.8 s late: the audit finds the cue in the mel image (and in the
    file's facts); preprocessed with trimming, the mel image no longer shows it, while
    the facts still say what the files hold."""
    from avcache.cache import open_cache
    from avcache.inspection.audit import audit, cue_strength, read_cues
    from avcache.preprocess.run import main as preprocess_main

    data = tmp_path / "data"
    for folder in ("trainset", "valset", "testset"):
        (data / folder).mkdir(parents=True)
    rows = {"train": [], "val": []}
    for split, folder, count in (("train", "trainset", 12), ("val", "valset", 8)):
        for i in range(count):
            name, fake = f"{split}{i}.mp4", i % 2
            start = 0.8 if fake else 0.0
            ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x32:rate=25:duration=2.0", "-ss",
                   str(0.1 * i), "-i", str(speech_wav()), "-filter_complex",
                   f"[1:a]atrim=0:1.2,adelay={int(start * 1000)}:all=1,apad=whole_dur=2.0[a]",
                   "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-preset", "veryfast",
                   "-c:a", "aac", "-t", "2.0", str(data / folder / name))  # fmt: skip
            rows[split].append(f"{name},{fake}")
    (data / "train_label.txt").write_text("video_name,target\n" + "\n".join(rows["train"]))
    (data / "val_label.txt").write_text("video_name,target\n" + "\n".join(rows["val"]))
    (data / "prediction.txt.csv").write_text("video_name,target\nval0.mp4,\n")
    strengths = {}
    for trim in ("0", "40"):
        out = tmp_path / f"cache-{trim}"
        args = ["--data", str(data), "--out", str(out), "--quiet", "--jobs", "1",
                "faces.frames=0", f"audio.trim_silence_db={trim}"]  # fmt: skip
        assert preprocess_main(args) == 0
        results = audit(read_cues(open_cache(out)), rounds=50)
        strengths[trim] = {cue: cue_strength(results, cue, "val")
                           for cue in ("mel_lead_quiet", "fact_lead_silence")}  # fmt: skip
    assert strengths["0"]["mel_lead_quiet"] > 0.95, strengths
    assert strengths["40"]["mel_lead_quiet"] < 0.8, strengths
    assert strengths["40"]["fact_lead_silence"] > 0.95, strengths
