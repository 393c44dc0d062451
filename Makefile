# train_int4 — build everything with `make`, run the whole suite with `make test`.
# Building needs nvcc but no GPU. Default: one fat binary for sm_80 (native INT4 tensor cores) and sm_90a
# (H100: INT4 values computed on s8 tensor cores / wgmma). Override e.g. `make GPU_ARCH=86`.
NVCC ?= nvcc
CXX ?= g++
GPU_ARCH ?= 80 90a
GENCODE := $(foreach a,$(GPU_ARCH),-gencode=arch=compute_$(a),code=sm_$(a))
# --use_fast_math is NOT used anywhere: the quantizers (kernels/int4_math.h) need IEEE division and
# round-half-even, and train_int4.cu/test_int4.cu/dev/ all include them. A file that includes no quantizer
# code may add it to its own rule below, with a comment saying why it is safe.
# -fopenmp: the host initialises a large model's parameters on all cores (train_int4.cu)
NVCC_FLAGS ?= -O3 -std=c++17 -lineinfo --expt-relaxed-constexpr -Xcompiler -Wall,-Wno-unused-function,-fopenmp
NVCC_LIBS := -lcublasLt -lcublas
# multi-GPU data parallelism (kernels/multi_gpu.h) needs NCCL: on when the toolkit has nccl.h, off with
# NO_MULTI_GPU=1 (train_int4 then runs on one GPU and refuses -N). train_int4_single_gpu is always built
# without it, so `make` proves both builds compile.
# NCCL outside the toolkit's paths: NCCL_HOME=<folder with include/nccl.h and lib/libnccl.so>.
NCCL_HOME ?=
NCCL_INCLUDE := $(if $(NCCL_HOME),-I$(NCCL_HOME)/include)
NO_MULTI_GPU ?= $(shell echo '\#include <nccl.h>' | $(NVCC) $(NCCL_INCLUDE) -E -x cu - >/dev/null 2>&1 || echo 1)
ifeq ($(NO_MULTI_GPU),)
MULTI_GPU_FLAGS := -DMULTI_GPU $(NCCL_INCLUDE)
MULTI_GPU_LIBS := $(if $(NCCL_HOME),-L$(NCCL_HOME)/lib -Xlinker -rpath=$(NCCL_HOME)/lib) -lnccl
endif
CXX_FLAGS ?= -O2 -std=c++17 -Wall -Wextra -fno-fast-math
# the first python3 that has torch: Debian's /usr/bin/python3 in CI (python3-torch), plain python3 on the H100
PYTHON ?= $(shell for p in python3 /usr/bin/python3; do $$p -c "import torch" 2>/dev/null && echo $$p && break; done)

HEADERS := $(wildcard kernels/*.h)
DEV_SOURCES := $(wildcard dev/*.cu)
DEV_BINARIES := $(DEV_SOURCES:.cu=)
DATA_SHARDS := data/tinyshakespeare_train.bin data/tinyshakespeare_val.bin
SPEAKER_TASK := data/speakers_train.tsv data/speakers_val.tsv

.PHONY: all dev test bench clean data
.DEFAULT_GOAL := train_int4

all: train_int4 train_int4_single_gpu test_int4 dev data ref/dump.bin ref/dump_bert.bin tools/model_roundtrip

train_int4: train_int4.cu $(HEADERS) | data
	$(NVCC) $(NVCC_FLAGS) $(MULTI_GPU_FLAGS) $(GENCODE) $< $(NVCC_LIBS) $(MULTI_GPU_LIBS) -o $@

train_int4_single_gpu: train_int4.cu $(HEADERS) | data
	$(NVCC) $(NVCC_FLAGS) $(GENCODE) $< $(NVCC_LIBS) -o $@

test_int4: test_int4.cu train_int4.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $(MULTI_GPU_FLAGS) $(GENCODE) $< $(NVCC_LIBS) $(MULTI_GPU_LIBS) -o $@

dev: $(DEV_BINARIES)

dev/%: dev/%.cu $(HEADERS) $(wildcard dev/*.h)
	$(NVCC) $(NVCC_FLAGS) $(GENCODE) $< $(NVCC_LIBS) -o $@

# host-only programs (no GPU, no nvcc): the shard and speaker-task writers, the model-file round trip
tools/%: data/%.cpp $(HEADERS)
	@mkdir -p tools
	$(CXX) $(CXX_FLAGS) -Ikernels $< -o $@ -lm

tools/%: scripts/%.cpp $(HEADERS)
	@mkdir -p tools
	$(CXX) $(CXX_FLAGS) -Ikernels $< -o $@ -lm

# byte-level tokens of the bundled tinyshakespeare in llm.c's shard format (first 90% train, last 10% val)
data: $(DATA_SHARDS) $(SPEAKER_TASK)
$(DATA_SHARDS) &: data/tinyshakespeare.txt tools/prepare_shards
	./tools/prepare_shards data/tinyshakespeare.txt data/tinyshakespeare

# the BERT fine-tuning task: which of the 8 most frequent speakers says a passage (label<TAB>text)
$(SPEAKER_TASK) &: data/tinyshakespeare.txt tools/prepare_speakers
	./tools/prepare_speakers data/tinyshakespeare.txt data/speakers

test: all
	PYTHON=$(PYTHON) bash scripts/run_tests.sh

bench: dev train_int4
	bash scripts/bench.sh

clean:
	rm -rf train_int4 train_int4_single_gpu test_int4 $(DEV_BINARIES) tools data/*.bin data/*.tsv ref

# the PyTorch reference state test_int4 compares against (CPU torch is enough; ~5 s)
ref/dump.bin: scripts/reference.py data/tinyshakespeare.txt
	$(PYTHON) scripts/reference.py --dump $@

ref/dump_bert.bin: scripts/reference.py data/tinyshakespeare.txt
	$(PYTHON) scripts/reference.py --dump $@ --model bert
