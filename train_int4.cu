/*
train_int4: trains a GPT (or, with -m bert, a BERT-style encoder) on token shards, in the spirit of llm.c's
train_gpt2.cu, in FP32, BF16 or INT4 — the last with every linear layer in the blocks done in 4-bit integers
(Xi et al. 2023: Hadamard-quantized forward, bit-split and leverage-score-sampled backward).

    make train_int4 && ./train_int4            # small GPT on the bundled tinyshakespeare bytes, then samples
    ./train_int4 -m bert -o out/bert           # masked-LM pretraining of the same stack, bidirectional
    ./train_int4 -m bert -e out/bert/model_00001500.bin -f data/speakers_train.tsv -F data/speakers_val.tsv
                                               # fine-tune a classifier on [CLS]: which speaker says a passage
    ./train_int4 -h                            # every flag

Reading order: config -> parameters -> activations -> model -> forward -> backward -> optimizer -> batches ->
checkpoints -> sampling -> command line -> training (and main). Kernels live in kernels/, one header per
concern. The compute type is a template parameter chosen once in main from -p: float for fp32,
__nv_bfloat16 for bf16 and int4 (int4 = bf16 with the blocks' linear layers quantized: linear_forward).
*/
#include <ctype.h>
#include <signal.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <string>
#include <algorithm>
#include <functional>
#include <vector>

#include "kernels/common.h"
#include "kernels/rng.h"
#include "kernels/encoder.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/attention.h"
#include "kernels/gelu.h"
#include "kernels/residual.h"
#include "kernels/dropout.h"
#include "kernels/crossentropy.h"
#include "kernels/adamw.h"
#include "kernels/dataloader.h"
#include "kernels/checkpoint.h"
#include "kernels/model_file.h"
#include "kernels/quant_linear.h"
#include "kernels/qstats.h"
#include "kernels/mlm.h"
#include "kernels/classification_data.h"
#include "kernels/multi_gpu.h"

// ----------------------------------------------------------------------------------------------------------
// config: GPTConfig (maxT, V, Vp, L, NH, C, BERT flag, classifier classes), the parameter names and sizes
// and the precision enum live in kernels/model_file.h with the file readers they size

// what the head on top of the final layernorm computes: GPT's next-token loss, BERT's masked-LM loss (both
// with the LM head tied to wte), or BERT's [CLS] classifier
enum Task { TASK_LM, TASK_MLM, TASK_CLASSIFY };
static Task config_task(const GPTConfig& c) {
    return !c.bert ? TASK_LM : c.num_classes > 0 ? TASK_CLASSIFY : TASK_MLM;
}

// ----------------------------------------------------------------------------------------------------------
// parameters: one allocation, a named pointer per tensor, in llm.c's order (so its checkpoints load), then
// BERT's classifier head (empty unless num_classes > 0, so GPT files are exactly llm.c's)

template <typename P> struct ParameterTensors {
    P* wte;       // (Vp, C)
    P* wpe;       // (maxT, C)
    P* ln1w;      // (L, C)
    P* ln1b;      // (L, C)
    P* qkvw;      // (L, 3C, C)
    P* qkvb;      // (L, 3C)
    P* attprojw;  // (L, C, C)
    P* attprojb;  // (L, C)
    P* ln2w;      // (L, C)
    P* ln2b;      // (L, C)
    P* fcw;       // (L, 4C, C)
    P* fcb;       // (L, 4C)
    P* fcprojw;   // (L, C, 4C)
    P* fcprojb;   // (L, C)
    P* lnfw;      // (C)
    P* lnfb;      // (C)
    P* clsw;      // (num_classes, C)
    P* clsb;      // (num_classes)
};

// weight decay applies to the 2-D tensors only (embeddings and matrices)
static bool parameter_is_decayed(int i) { return i == 0 || i == 1 || i == 4 || i == 6 || i == 10 || i == 12 || i == 16; }

template <typename P> void point_parameters(ParameterTensors<P>* p, P* base, const size_t sizes[NUM_PARAMETER_TENSORS]) {
    P** pointers[NUM_PARAMETER_TENSORS] = {&p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->qkvw, &p->qkvb,
                                           &p->attprojw, &p->attprojb, &p->ln2w, &p->ln2b, &p->fcw, &p->fcb,
                                           &p->fcprojw, &p->fcprojb, &p->lnfw, &p->lnfb, &p->clsw, &p->clsb};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        *pointers[i] = base;
        base += sizes[i];
    }
}

// ----------------------------------------------------------------------------------------------------------
// activations: everything the backward reads, per layer, plus scratch reused across layers

template <typename T> struct ActivationTensors {
    T* encoded;        // (B, T, C)
    T* ln1;            // (L, B, T, C), or one layer's (B, T, C) with -R 2 (recomputed in the backward)
    float* ln1_mean;   // (L, B, T)
    float* ln1_rstd;   // (L, B, T)
    T* qkv;            // (L, B, T, 3C)
    T* atty;           // (L, B, T, C)
    T* att;            // (L, B, NH, T, T) attention probabilities, cuBLASLt attention path only
    float* att_lse2;   // (L, B, NH, T) softmax log2-denominators, flash attention path only
    T* residual2;      // (L, B, T, C)
    T* ln2;            // (L, B, T, C), or one layer's (B, T, C) with -R 2
    float* ln2_mean;   // (L, B, T)
    float* ln2_rstd;   // (L, B, T)
    T* fch;            // (L, B, T, 4C)
    T* fch_gelu;       // (B, T, 4C): one layer's GELU output, recomputed from fch in the backward (as llm.c)
    T* residual3;      // (L, B, T, C)
    T* lnf;            // (B, T, C)
    float* lnf_mean;   // (B, T)
    float* lnf_rstd;   // (B, T)
    T* logits;         // (B, T, Vp), or (B, num_classes) for the classifier; holds dlogits after the loss
    float* losses;     // (B, T)
    // scratch
    T* btc;            // (B, T, C): branch outputs in the forward, branch input gradients in the backward
    T* dresidual;      // (B, T, C): the residual-stream gradient
    T* bt4c;           // (B, T, 4C): MLP hidden gradient
    T* bt3c;           // (B, T, 3C): qkv gradient (first the attention branch's dropout gradient)
    float* reduce;     // partial sums of bias/layernorm/norm reductions
    AttentionScratch<T> attention;
};

// ----------------------------------------------------------------------------------------------------------
// the model

template <typename T> struct GPT {
    GPTConfig config;
    Task task;                        // from the config: LM, MLM or CLASSIFY
    size_t parameter_sizes[NUM_PARAMETER_TENSORS];
    size_t num_parameters;
    ParameterTensors<T> params;       // the compute copy (the FP32 master itself in fp32 mode)
    ParameterTensors<float> grads;    // FP32 gradients, accumulated over micro-steps
    T* params_memory;
    float* master_memory;             // FP32 master weights
    float* grads_memory;
    float* m_memory;                  // AdamW moments
    float* v_memory;
    ActivationTensors<T> acts;
    void* acts_memory;
    int B, T_;                        // the batch the activations were sized for
    int* inputs;                      // (B, T) device
    int* targets;                     // (B, T) device: next tokens (LM), masked tokens or -1 (MLM); (B) labels (CLASSIFY)
    int num_predicted;                // targets >= 0 in the last uploaded batch: the loss is their mean
    int* buckets;                     // encoder-backward token buckets, device
    float* norm;                      // the last global gradient norm, device
    bool recompute_layernorm;         // -R 2: ln1/ln2 hold one layer, recomputed from the residual stream in the backward
    // INT4 mode: the four linear layers of each block (except those kept in BF16) are quantized layers;
    // their LSQ steps (L, 4, 2: [layer][qkv, attproj, fc, fcproj][x, w]) live in FP32 right after the
    // parameters in master/grads/m/v, so the optimizer, the gradient norm and the state file include them
    bool int4;
    int hadamard_block;
    float keep_ratio;
    std::vector<char> layer_in_bf16;  // per layer: 1 = this block's linears stay in BF16
    size_t num_lsq_steps;             // LSQ step sizes: L * 8 in INT4 mode, else 0
    float* lsq_steps;                 // master_memory + num_parameters
    float* lsq_grads;                 // grads_memory + num_parameters
    bool lsq_steps_initialised;       // from the first forward, or from a state file
    QuantScratch quant_scratch;
    float* lss_stats;                 // (L*4, 2) device: per linear, the last backward's LSS kept fraction, variance proxy
    double* qstats_scratch;
    float dropout;                    // residual-branch dropout of the last forward (0 in evaluation)
    uint32_t seed, micro_step;        // key every draw of a micro-step: dropout masks (micro_step, layer*4 + branch,
                                      // RNG_USE_DATA), INT4 stochastic rounding and LSS (kernels/quant_linear.h)
    TokenBuckets host_buckets;
    cudaStream_t stream;
};

// GPT-2 init from the shared hash (kernels/rng.h): tensor t draws rng_normal(rng_key(seed, init stream t), i);
// std 0.02, residual projections 0.02/sqrt(2L), layernorm weights 1, biases 0 — as scripts/reference.py
static void gpt_init_parameters(float* host, const size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig& cfg,
                                uint32_t seed) {
    float residual_std = 0.02f / sqrtf(2.0f * cfg.num_layers);
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        const char* name = parameter_names[t];
        bool is_ln_weight = !strcmp(name, "ln1w") || !strcmp(name, "ln2w") || !strcmp(name, "lnfw");
        bool is_bias = name[strlen(name) - 1] == 'b';
        float std = (!strcmp(name, "attprojw") || !strcmp(name, "fcprojw")) ? residual_std : 0.02f;
        uint32_t key = rng_key(seed, rng_stream_init(t));
#pragma omp parallel for  // each element from its own hash draw: the same values on any thread count
        for (size_t i = 0; i < sizes[t]; i++) {
            host[i] = is_ln_weight ? 1.0f : is_bias ? 0.0f : rng_normal(key, (uint32_t)i) * std;
        }
        host += sizes[t];
    }
}


// points every activation into one allocation at base and returns the bytes they span (base = nullptr: only
// the size, for the allocation and the memory check). recompute_layernorm: ln1/ln2 for one layer only.
template <typename T>
size_t point_activations(ActivationTensors<T>* a, char* base, const GPTConfig& cfg, int B, int T_,
                         bool recompute_layernorm) {
    size_t L = cfg.num_layers, C = cfg.channels, NH = cfg.num_heads, BT = (size_t)B * T_, Vp = cfg.padded_vocab_size;
    bool flash = attention_is_flash<T>(cfg.channels / cfg.num_heads);  // no (T, T) tensors on the flash path
    size_t scores = flash ? 0 : NH * BT * T_, attention_heads = flash ? 0 : BT * C;
    size_t ln_layers = recompute_layernorm ? 1 : L;
    uintptr_t cursor = (uintptr_t)base;
    // every tensor 16-byte aligned, so that kernels can move 16-byte vectors (kernels/common.h, Packed)
    auto take_t = [&](size_t count) { T* p = (T*)cursor; cursor = (cursor + count * sizeof(T) + 15) & ~(uintptr_t)15; return p; };
    auto take_f = [&](size_t count) { float* p = (float*)cursor; cursor = (cursor + count * sizeof(float) + 15) & ~(uintptr_t)15; return p; };
    a->encoded = take_t(BT * C);
    a->ln1 = take_t(ln_layers * BT * C);
    a->qkv = take_t(L * BT * 3 * C);
    a->atty = take_t(L * BT * C);
    a->att = take_t(L * scores);
    a->residual2 = take_t(L * BT * C);
    a->ln2 = take_t(ln_layers * BT * C);
    a->fch = take_t(L * BT * 4 * C);
    a->fch_gelu = take_t(BT * 4 * C);
    a->residual3 = take_t(L * BT * C);
    a->lnf = take_t(BT * C);
    a->logits = take_t(BT * Vp);
    a->btc = take_t(BT * C);
    a->dresidual = take_t(BT * C);
    a->bt4c = take_t(BT * 4 * C);
    a->bt3c = take_t(BT * 3 * C);
    a->attention.q = take_t(attention_heads);
    a->attention.k = take_t(attention_heads);
    a->attention.v = take_t(attention_heads);
    a->attention.y_heads = take_t(attention_heads);
    a->attention.dq = take_t(attention_heads);
    a->attention.dk = take_t(attention_heads);
    a->attention.dv = take_t(attention_heads);
    a->attention.dscores = take_t(scores);
    a->ln1_mean = take_f(L * BT);
    a->ln1_rstd = take_f(L * BT);
    a->ln2_mean = take_f(L * BT);
    a->ln2_rstd = take_f(L * BT);
    a->lnf_mean = take_f(BT);
    a->lnf_rstd = take_f(BT);
    a->losses = take_f(BT);
    a->reduce = take_f(std::max(layernorm_scratch_floats(BT, C), CEIL_DIV(BT, 256) * 4 * C) + NORM_BLOCKS);
    a->attention.scores = take_f(scores);
    a->att_lse2 = take_f(flash ? L * NH * BT : 0);
    a->attention.dot = take_f(flash ? NH * BT : 0);
    return cursor - (uintptr_t)base;
}

struct QuantConfig {
    bool enabled;
    int hadamard_block;
    float keep_ratio;
    std::vector<char> layer_in_bf16;
};

// the BF16 compute copy of the FP32 master weights, from the host (bf16 and int4 modes: fp32 mode computes on
// the master itself); each value converted on its own, on all cores
template <typename T> void upload_compute_copy(GPT<T>* model, const float* host_master) {
    size_t n = model->num_parameters;
    std::vector<T> converted(n);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) converted[i] = host_float_to_bf16(host_master[i]);
    cudaCheck(cudaMemcpy(model->params_memory, converted.data(), n * sizeof(T), cudaMemcpyHostToDevice));
}

// allocates everything for batch (B, T) and uploads the FP32 master weights from host
template <typename T>
void gpt_build(GPT<T>* model, const GPTConfig& cfg, const float* host_master, int B, int T_,
               const QuantConfig& quant = {false, 32, 1.0f, {}}, bool recompute_layernorm = false) {
    model->config = cfg;
    model->recompute_layernorm = recompute_layernorm;
    model->task = config_task(cfg);
    model->num_predicted = 0;
    model->int4 = quant.enabled;
    model->hadamard_block = quant.hadamard_block;
    model->keep_ratio = quant.keep_ratio;
    model->layer_in_bf16 = quant.layer_in_bf16;
    model->layer_in_bf16.resize(cfg.num_layers, 0);
    model->num_lsq_steps = quant.enabled ? (size_t)cfg.num_layers * 8 : 0;
    model->lsq_steps_initialised = false;
    model->B = B;
    model->T_ = T_;
    model->dropout = 0.0f;
    model->seed = 0;
    model->micro_step = 0;
    fill_parameter_sizes(model->parameter_sizes, cfg);
    size_t n = 0;
    for (size_t s : model->parameter_sizes) n += s;
    model->num_parameters = n;
    size_t total = n + model->num_lsq_steps;
    cudaCheck(cudaStreamCreate(&model->stream));
    cudaCheck(cudaMalloc(&model->master_memory, total * sizeof(float)));
    cudaCheck(cudaMalloc(&model->grads_memory, total * sizeof(float)));
    cudaCheck(cudaMalloc(&model->m_memory, total * sizeof(float)));
    cudaCheck(cudaMalloc(&model->v_memory, total * sizeof(float)));
    cudaCheck(cudaMemset(model->m_memory, 0, total * sizeof(float)));
    cudaCheck(cudaMemset(model->v_memory, 0, total * sizeof(float)));
    cudaCheck(cudaMemset(model->grads_memory, 0, total * sizeof(float)));
    cudaCheck(cudaMemset(model->master_memory, 0, total * sizeof(float)));
    cudaCheck(cudaMemcpy(model->master_memory, host_master, n * sizeof(float), cudaMemcpyHostToDevice));
    model->lsq_steps = model->master_memory + n;
    model->lsq_grads = model->grads_memory + n;
    if (std::is_same<T, float>::value) {
        model->params_memory = (T*)model->master_memory;
    } else {
        cudaCheck(cudaMalloc(&model->params_memory, n * sizeof(T)));
        upload_compute_copy(model, host_master);
    }
    point_parameters(&model->params, model->params_memory, model->parameter_sizes);
    point_parameters(&model->grads, model->grads_memory, model->parameter_sizes);

    size_t BT = (size_t)B * T_;
    cudaCheck(cudaMalloc(&model->acts_memory, point_activations(&model->acts, nullptr, cfg, B, T_, recompute_layernorm)));
    point_activations(&model->acts, (char*)model->acts_memory, cfg, B, T_, recompute_layernorm);
    cudaCheck(cudaMalloc(&model->inputs, BT * sizeof(int)));
    cudaCheck(cudaMalloc(&model->targets, BT * sizeof(int)));
    cudaCheck(cudaMalloc(&model->buckets, (3 * BT + 1) * sizeof(int)));  // <= BT buckets: tokens, starts, positions
    cudaCheck(cudaMalloc(&model->norm, sizeof(float)));
    cudaCheck(cudaMalloc(&model->qstats_scratch, 4 * sizeof(double)));
    if (model->int4) quant_scratch_alloc(&model->quant_scratch, BT, 4 * cfg.channels);
    cudaCheck(cudaMalloc(&model->lss_stats, (size_t)cfg.num_layers * 8 * sizeof(float)));
    cudaCheck(cudaMemset(model->lss_stats, 0, (size_t)cfg.num_layers * 8 * sizeof(float)));
}

template <typename T> void gpt_free(GPT<T>* model) {
    if ((void*)model->params_memory != (void*)model->master_memory) cudaCheck(cudaFree(model->params_memory));
    if (model->int4) quant_scratch_free(&model->quant_scratch);
    void* buffers[] = {model->master_memory, model->grads_memory, model->m_memory, model->v_memory,
                       model->acts_memory, model->inputs, model->targets, model->buckets, model->norm,
                       model->qstats_scratch, model->lss_stats};
    for (void* p : buffers) cudaCheck(cudaFree(p));
    cudaCheck(cudaStreamDestroy(model->stream));
}

// ----------------------------------------------------------------------------------------------------------
// forward: inputs (B, T) -> logits; with targets, the per-token losses and (grad_scale > 0) dlogits

// rows of the loss: every position (LM, MLM) or one per sequence (the classifier on [CLS])
template <typename T> long gpt_loss_rows(GPT<T>* model) {
    return model->task == TASK_CLASSIFY ? model->B : (long)model->B * model->T_;
}

// inputs (B, T); targets (gpt_loss_rows) with -1 where nothing is predicted, or null when sampling
template <typename T> void gpt_upload_batch(GPT<T>* model, const int* inputs, const int* targets) {
    size_t BT = (size_t)model->B * model->T_, rows = gpt_loss_rows(model);
    cudaCheck(cudaMemcpyAsync(model->inputs, inputs, BT * sizeof(int), cudaMemcpyHostToDevice, model->stream));
    if (targets) cudaCheck(cudaMemcpyAsync(model->targets, targets, rows * sizeof(int), cudaMemcpyHostToDevice, model->stream));
    model->num_predicted = 0;
    for (size_t i = 0; targets && i < rows; i++) model->num_predicted += targets[i] >= 0;
    token_buckets_build(&model->host_buckets, inputs, (int)BT, model->config.padded_vocab_size);
    const TokenBuckets& b = model->host_buckets;
    int* dst = model->buckets;
    cudaCheck(cudaMemcpyAsync(dst, b.bucket_token.data(), b.count() * sizeof(int), cudaMemcpyHostToDevice, model->stream));
    cudaCheck(cudaMemcpyAsync(dst + b.count(), b.bucket_start.data(), (b.count() + 1) * sizeof(int), cudaMemcpyHostToDevice, model->stream));
    cudaCheck(cudaMemcpyAsync(dst + 2 * b.count() + 1, b.positions.data(), BT * sizeof(int), cudaMemcpyHostToDevice, model->stream));
    cudaCheck(cudaStreamSynchronize(model->stream));  // the host bucket vectors are reused by the next upload
}

// layer l's slices of the per-layer activations; residual is the block's input (the embedding for l = 0)
template <typename T> struct LayerActivations {
    T *residual, *ln1, *qkv, *atty;
    AttentionSaved<T> att;
    T *residual2, *ln2, *fch, *fch_gelu, *residual3;
};

template <typename T> LayerActivations<T> layer_activations(GPT<T>* model, int l) {
    ActivationTensors<T>& a = model->acts;
    size_t NC = (size_t)model->B * model->T_ * model->config.channels;
    size_t rows = (size_t)model->config.num_heads * model->B * model->T_;  // (B, NH, T)
    bool flash = attention_is_flash<T>(model->config.channels / model->config.num_heads);
    AttentionSaved<T> att = {flash ? nullptr : a.att + l * rows * model->T_, flash ? a.att_lse2 + l * rows : nullptr};
    size_t ln = model->recompute_layernorm ? 0 : l * NC;
    return {l == 0 ? a.encoded : a.residual3 + (l - 1) * NC, a.ln1 + ln, a.qkv + l * 3 * NC, a.atty + l * NC,
            att, a.residual2 + l * NC, a.ln2 + ln, a.fch + l * 4 * NC, a.fch_gelu,
            a.residual3 + l * NC};
}

// block l's first (which = 1, of the block's input) or second (which = 2, of residual2) layernorm into its
// buffer: in the forward, and with -R 2 again in the backward and for -qstats (the same kernel on the same
// inputs gives the same bits; the statistics are rewritten with their own values)
template <typename T> void block_layernorm(GPT<T>* model, int l, int which) {
    LayerActivations<T> la = layer_activations(model, l);
    ActivationTensors<T>& a = model->acts;
    ParameterTensors<T>& p = model->params;
    const int N = model->B * model->T_, C = model->config.channels;
    if (which == 1) {
        layernorm_forward(la.ln1, a.ln1_mean + l * N, a.ln1_rstd + l * N, la.residual, p.ln1w + l * C, p.ln1b + l * C,
                          N, C, model->stream);
    } else {
        layernorm_forward(la.ln2, a.ln2_mean + l * N, a.ln2_rstd + l * N, la.residual2, p.ln2w + l * C,
                          p.ln2b + l * C, N, C, model->stream);
    }
}

// One linear layer of block `layer` (which: 0 qkv, 1 attproj, 2 fc, 3 fcproj): out (N x M) = inp (N x K) · wᵀ + b.
// The precision switch of the model is here: in INT4 mode a quantized layer (HQ-MM), else cuBLASLt.
template <typename T> bool linear_is_quantized(GPT<T>* model, int layer) {
    return model->int4 && !model->layer_in_bf16[layer];
}

// A block linear's number, layer·4 + which: the linear index of its RNG streams (kernels/rng.h); in INT4 mode its
// LSQ steps (x, w) are lsq_steps[2·number + 0, 1] and its LSS statistics lss_stats[2·number + 0, 1]
inline int linear_number(int layer, int which) { return layer * 4 + which; }

template <typename T>
void linear_forward(GPT<T>* model, int layer, int which, T* out, const T* inp, const T* w, const T* b, int K, int M) {
    int N = model->B * model->T_;
    if (!linear_is_quantized(model, layer)) {
        matmul_forward(out, inp, w, b, N, K, M, model->stream);
        return;
    }
    float* step_x = model->lsq_steps + 2 * linear_number(layer, which);
    if (!model->lsq_steps_initialised) {  // LSQ init at the first forward: 2·mean|v·H|/√7 for the input and the weight
        int g = model->hadamard_block;
        float init[2] = {quant_error(inp, N, K, g, 0.0f, model->qstats_scratch, model->stream).step,
                         quant_error(w, M, K, g, 0.0f, model->qstats_scratch, model->stream).step};
        cudaCheck(cudaMemcpy(step_x, init, sizeof init, cudaMemcpyHostToDevice));
    }
    quant_linear_forward(out, inp, w, b, N, K, M, model->hadamard_block, step_x, step_x + 1, model->quant_scratch, model->stream);
}

template <typename T>
void linear_backward(GPT<T>* model, int layer, int which, T* dinp, float* dw, float* db, const T* dout, const T* inp,
                     const T* w, int K, int M) {
    int N = model->B * model->T_;
    if (!linear_is_quantized(model, layer)) {
        matmul_backward(dinp, dw, db, dout, inp, w, N, K, M, model->acts.reduce, model->stream);
        return;
    }
    int number = linear_number(layer, which), offset = 2 * number;
    quant_linear_backward(dinp, dw, db, model->lsq_grads + offset, model->lsq_grads + offset + 1, dout, inp, w, N, K,
                          M, model->hadamard_block, model->lsq_steps + offset, model->lsq_steps + offset + 1,
                          model->keep_ratio, model->seed, model->micro_step, (uint32_t)number,
                          model->lss_stats + offset, model->quant_scratch, model->acts.reduce, model->stream);
}

// The MLP projection's backward and GELU's, into dfch (N x 4C): GELU's output is not kept per layer (4C of the ~16C
// values a block saves per token), so it is recomputed here. cuBLASLt: the projection's input gradient, then GELU
// recomputed and its backward in one pass, then the weight gradient from the recomputed output. An INT4 layer needs
// the output first (its codes): GELU recomputed, the layer's backward, GELU's backward.
template <typename T>
void mlp_projection_backward(GPT<T>* model, int l, T* dfch, const T* dbranch, const T* fch, T* fch_gelu) {
    const int N = model->B * model->T_, C = model->config.channels;
    const T* w = model->params.fcprojw + (size_t)l * C * 4 * C;
    float *dw = model->grads.fcprojw + (size_t)l * C * 4 * C, *db = model->grads.fcprojb + l * C;
    if (linear_is_quantized(model, l)) {
        gelu_forward(fch_gelu, fch, (long)N * 4 * C, model->stream);
        linear_backward(model, l, 3, dfch, dw, db, dbranch, fch_gelu, w, 4 * C, C);
        gelu_backward(dfch, fch, dfch, (long)N * 4 * C, model->stream);
    } else {
        {
            NvtxRange range("matmul_backward");
            matmul_backward_input(dfch, dbranch, w, N, 4 * C, C, model->stream);
        }
        gelu_backward_recompute(dfch, fch_gelu, fch, dfch, (long)N * 4 * C, model->stream);
        NvtxRange range("matmul_backward");
        matmul_backward_weight(dw, db, dbranch, fch_gelu, N, 4 * C, C, model->acts.reduce, model->stream);
    }
}

// dropout of a residual branch's output (branch 1: attention projection, 3: MLP projection); forward and
// backward apply the same mask, drawn from the shared hash at this micro-step
template <typename T> void gpt_dropout(GPT<T>* model, T* out, const T* inp, int layer, int branch) {
    uint32_t key = rng_key(model->seed, rng_stream_train(model->micro_step, linear_number(layer, branch), RNG_USE_DATA));
    dropout(out, inp, (long)model->B * model->T_ * model->config.channels, model->dropout, key, model->stream);
}

// dropout: the residual-branch dropout probability (training), 0 for evaluation and sampling
template <typename T> void gpt_forward(GPT<T>* model, float dropout = 0.0f) {
    model->dropout = dropout;
    const GPTConfig& cfg = model->config;
    const int B = model->B, T_ = model->T_, C = cfg.channels, NH = cfg.num_heads, L = cfg.num_layers;
    const int N = B * T_;
    ParameterTensors<T>& p = model->params;
    ActivationTensors<T>& a = model->acts;
    cudaStream_t s = model->stream;
    encoder_forward(a.encoded, model->inputs, p.wte, p.wpe, B, T_, C, s);
    for (int l = 0; l < L; l++) {
        NvtxRange range("block_forward");
        auto [residual, ln1, qkv, atty, att, residual2, ln2, fch, fch_gelu, residual3] = layer_activations(model, l);
        block_layernorm(model, l, 1);
        linear_forward(model, l, 0, qkv, ln1, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, C, 3 * C);
        attention_forward(atty, att, qkv, cfg.bert ? model->inputs : nullptr, B, T_, C, NH, a.attention, s);
        linear_forward(model, l, 1, a.btc, atty, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, C, C);
        if (dropout > 0.0f) gpt_dropout(model, a.btc, a.btc, l, 1);
        residual_forward(residual2, residual, a.btc, (long)N * C, s);
        block_layernorm(model, l, 2);
        linear_forward(model, l, 2, fch, ln2, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, C, 4 * C);
        gelu_forward(fch_gelu, fch, (long)N * 4 * C, s);
        linear_forward(model, l, 3, a.btc, fch_gelu, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, 4 * C, C);
        if (dropout > 0.0f) gpt_dropout(model, a.btc, a.btc, l, 3);
        residual_forward(residual3, residual2, a.btc, (long)N * C, s);
    }
    model->lsq_steps_initialised = true;
    NvtxRange range("head_forward");
    layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, a.residual3 + (size_t)(L - 1) * N * C, p.lnfw, p.lnfb, N, C, s);
    if (model->task == TASK_CLASSIFY) {  // logits (B, classes) from the [CLS] rows, gathered into btc (B, C)
        cudaCheck(cudaMemcpy2DAsync(a.btc, C * sizeof(T), a.lnf, (size_t)T_ * C * sizeof(T), C * sizeof(T), B,
                                    cudaMemcpyDeviceToDevice, s));
        matmul_forward(a.logits, a.btc, p.clsw, p.clsb, B, C, cfg.num_classes, s);
    } else {
        matmul_forward(a.logits, a.lnf, p.wte, (const T*)nullptr, N, C, cfg.padded_vocab_size, s);
    }
}

// per-row losses into acts.losses; grad_scale > 0 also turns the logits into dlogits for the backward.
// The gradient of the mean loss over a micro-batch is 1 / num_predicted; the caller adds accumulation.
template <typename T> void gpt_loss(GPT<T>* model, float grad_scale) {
    bool classify = model->task == TASK_CLASSIFY;
    int V = classify ? model->config.num_classes : model->config.vocab_size;
    int Vp = classify ? model->config.num_classes : model->config.padded_vocab_size;
    crossentropy_forward_backward(model->acts.logits, model->acts.losses, model->targets, gpt_loss_rows(model), V, Vp,
                                  grad_scale, model->stream);
}

// mean loss over the predicted rows of the last gpt_loss (unpredicted rows hold 0; synchronises)
template <typename T> float gpt_mean_loss(GPT<T>* model) {
    size_t rows = gpt_loss_rows(model);
    std::vector<float> losses(rows);
    cudaCheck(cudaMemcpyAsync(losses.data(), model->acts.losses, rows * sizeof(float), cudaMemcpyDeviceToHost, model->stream));
    cudaCheck(cudaStreamSynchronize(model->stream));
    double sum = 0.0;
    for (float l : losses) sum += l;
    return (float)(sum / std::max(model->num_predicted, 1));
}

// correct argmax predictions among the labelled rows of the last classifier forward (synchronises)
template <typename T> int gpt_correct_predictions(GPT<T>* model, const int* labels) {
    int K = model->config.num_classes, correct = 0;
    std::vector<T> logits((size_t)model->B * K);
    cudaCheck(cudaMemcpyAsync(logits.data(), model->acts.logits, logits.size() * sizeof(T), cudaMemcpyDeviceToHost, model->stream));
    cudaCheck(cudaStreamSynchronize(model->stream));
    for (int b = 0; b < model->B; b++) {
        int best = 0;
        for (int k = 1; k < K; k++) best = (float)logits[(size_t)b * K + k] > (float)logits[(size_t)b * K + best] ? k : best;
        correct += labels[b] >= 0 && best == labels[b];
    }
    return correct;
}

// the loss-gradient scale for a micro-batch of an optimizer step with `accumulation` micro-batches
template <typename T> float gpt_grad_scale(GPT<T>* model, int accumulation) {
    return 1.0f / ((float)std::max(model->num_predicted, 1) * accumulation);
}

// ----------------------------------------------------------------------------------------------------------
// backward: the forward's calls in reverse; gradients accumulate into model->grads

template <typename T> void gpt_backward(GPT<T>* model) {
    const GPTConfig& cfg = model->config;
    const int B = model->B, T_ = model->T_, C = cfg.channels, NH = cfg.num_heads, L = cfg.num_layers;
    const int N = B * T_;
    ParameterTensors<T>& p = model->params;
    ParameterTensors<float>& g = model->grads;
    ActivationTensors<T>& a = model->acts;
    cudaStream_t s = model->stream;
    {  // the head's backward, in its own NVTX range
        NvtxRange range("head_backward");
        if (model->task == TASK_CLASSIFY) {  // d[CLS] rows (B, C) into bt4c, then scattered into a zero dlnf (btc)
            matmul_backward(a.bt4c, g.clsw, g.clsb, a.logits, a.btc, p.clsw, B, C, cfg.num_classes, a.reduce, s);
            cudaCheck(cudaMemsetAsync(a.btc, 0, (size_t)N * C * sizeof(T), s));
            cudaCheck(cudaMemcpy2DAsync(a.btc, (size_t)T_ * C * sizeof(T), a.bt4c, C * sizeof(T), C * sizeof(T), B,
                                        cudaMemcpyDeviceToDevice, s));
        } else {
            matmul_backward(a.btc, g.wte, (float*)nullptr, a.logits, a.lnf, p.wte, N, C, cfg.padded_vocab_size,
                            a.reduce, s);
        }
        cudaCheck(cudaMemsetAsync(a.dresidual, 0, (size_t)N * C * sizeof(T), s));
        layernorm_backward(a.dresidual, g.lnfw, g.lnfb, a.btc, a.residual3 + (size_t)(L - 1) * N * C, p.lnfw, a.lnf_mean,
                           a.lnf_rstd, N, C, a.reduce, s);
    }
    for (int l = L - 1; l >= 0; l--) {
        NvtxRange range("block_backward");
        auto [residual, ln1, qkv, atty, att, residual2, ln2, fch, fch_gelu, residual3] = layer_activations(model, l);
        (void)residual3;  // the backward starts from the residual-stream gradient instead
        const T* dbranch = a.dresidual;  // the gradient entering a residual branch (through its dropout)
        if (model->dropout > 0.0f) { gpt_dropout(model, a.btc, a.dresidual, l, 3); dbranch = a.btc; }
        mlp_projection_backward(model, l, a.bt4c, dbranch, fch, fch_gelu);
        if (model->recompute_layernorm) block_layernorm(model, l, 2);
        linear_backward(model, l, 2, a.btc, g.fcw + (size_t)l * 4 * C * C, g.fcb + l * 4 * C, a.bt4c, ln2,
                        p.fcw + (size_t)l * 4 * C * C, C, 4 * C);
        layernorm_backward(a.dresidual, g.ln2w + l * C, g.ln2b + l * C, a.btc, residual2, p.ln2w + l * C,
                           a.ln2_mean + l * N, a.ln2_rstd + l * N, N, C, a.reduce, s);
        dbranch = a.dresidual;
        if (model->dropout > 0.0f) { gpt_dropout(model, a.bt3c, a.dresidual, l, 1); dbranch = a.bt3c; }
        linear_backward(model, l, 1, a.btc, g.attprojw + (size_t)l * C * C, g.attprojb + l * C, dbranch, atty,
                        p.attprojw + (size_t)l * C * C, C, C);
        attention_backward(a.bt3c, a.btc, qkv, atty, att, cfg.bert ? model->inputs : nullptr, B, T_, C, NH,
                           a.attention, s);
        if (model->recompute_layernorm) block_layernorm(model, l, 1);
        linear_backward(model, l, 0, a.btc, g.qkvw + (size_t)l * 3 * C * C, g.qkvb + l * 3 * C, a.bt3c, ln1,
                        p.qkvw + (size_t)l * 3 * C * C, C, 3 * C);
        layernorm_backward(a.dresidual, g.ln1w + l * C, g.ln1b + l * C, a.btc, residual, p.ln1w + l * C,
                           a.ln1_mean + l * N, a.ln1_rstd + l * N, N, C, a.reduce, s);
    }
    encoder_backward(g.wte, g.wpe, a.dresidual, model->host_buckets, model->buckets, B, T_, C, s);
}

// ----------------------------------------------------------------------------------------------------------
// optimizer: global-norm clipping + AdamW on the FP32 master weights, then the compute copy

struct OptimizerConfig {
    float learning_rate, beta1, beta2, eps, weight_decay, grad_clip;
};

// zero the gradients before the first micro-step of an optimizer step
template <typename T> void gpt_zero_grad(GPT<T>* model) {
    cudaCheck(cudaMemsetAsync(model->grads_memory, 0, (model->num_parameters + model->num_lsq_steps) * sizeof(float),
                              model->stream));
}

// the global gradient norm (FP32 gradients and LSQ step gradients), left on the device for the update's
// clipping and returned to the host (synchronises: the caller decides whether the step is safe to apply)
template <typename T> float gpt_grad_norm(GPT<T>* model) {
    global_norm(model->norm, model->grads_memory, (long)(model->num_parameters + model->num_lsq_steps), model->acts.reduce,
                model->stream);
    float norm;
    cudaCheck(cudaMemcpyAsync(&norm, model->norm, sizeof norm, cudaMemcpyDeviceToHost, model->stream));
    cudaCheck(cudaStreamSynchronize(model->stream));
    return norm;
}

// AdamW with the clipping factor from gpt_grad_norm; t: the step number starting at 1 (bias correction)
template <typename T> void gpt_update(GPT<T>* model, const OptimizerConfig& opt, float lr, int t) {
    NvtxRange range("adamw");
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = model->parameter_sizes[i];
        if (n == 0) continue;  // no classifier
        adamw_update(model->master_memory + offset, model->params_memory + offset, model->grads_memory + offset,
                     model->m_memory + offset, model->v_memory + offset, (long)n, lr, opt.beta1, opt.beta2, t, opt.eps,
                     parameter_is_decayed(i) ? opt.weight_decay : 0.0f, model->norm, opt.grad_clip, model->stream);
        offset += n;
    }
    if (model->num_lsq_steps > 0) {  // LSQ steps: FP32 only, no weight decay, relative updates (kernels/adamw.h)
        adamw_update(model->lsq_steps, model->lsq_steps, model->lsq_grads, model->m_memory + offset,
                     model->v_memory + offset, (long)model->num_lsq_steps, lr, opt.beta1, opt.beta2, t, opt.eps, 0.0f,
                     model->norm, opt.grad_clip, model->stream, true);
    }
}

// cosine decay from lr to lr * final_fraction after a linear warmup
static float learning_rate_at(int step, int warmup, int total, float lr, float final_fraction) {
    if (step < warmup) return lr * (step + 1) / warmup;
    if (total <= warmup) return lr;
    float progress = (float)(step - warmup) / (float)(total - warmup);
    float cosine = 0.5f * (1.0f + cosf(3.14159265358979f * fminf(progress, 1.0f)));
    return lr * (final_fraction + (1.0f - final_fraction) * cosine);
}

// ----------------------------------------------------------------------------------------------------------
// batches: token shards for GPT (next token) and BERT (masked LM), a label<TAB>text file for the classifier.
// Shared-hash streams (micro-step n, slot, RNG_USE_DATA): slot 0 draws the MLM masks and classifier examples of
// training batch n, slot 2 the masks of validation batch n; dropout uses slots 4l+1 and 4l+3, so no two uses
// share a counter. GPT/MLM training windows come from the loader's own key (seed ^ 'DATA', kernels/dataloader.h).

struct Batches {
    Task task;
    int B, T;
    uint32_t seed;
    DataLoader train_loader, val_loader;   // LM and MLM (MLM windows are T - 2 long: [CLS] and [SEP] added)
    ClassificationSet train_set, val_set;  // CLASSIFY
    std::vector<int> inputs, targets;      // the host batch: (B, T) inputs, gpt_loss_rows targets
};

static bool batches_init(Batches* d, Task task, const char* train_path, const char* val_path, bool want_val, int B,
                         int T, int vocab, uint32_t seed) {
    d->task = task;
    d->B = B;
    d->T = T;
    d->seed = seed;
    d->inputs.assign((size_t)B * T, 0);
    d->targets.assign((size_t)B * T, -1);
    if (task == TASK_CLASSIFY) {
        return classification_load(train_path, nullptr, &d->train_set) &&
               (!want_val || classification_load(val_path, &d->train_set.label_names, &d->val_set));
    }
    int window = task == TASK_MLM ? T - 2 : T;
    return dataloader_init(&d->train_loader, train_path, B, window, vocab, true, seed) &&
           (!want_val || dataloader_init(&d->val_loader, val_path, B, window, vocab));
}

// training batch n (the global micro-step): a function of (seed, n), so a resumed run sees the same batches
static bool batches_next_train(Batches* d, long n) {
    uint32_t key = rng_key(d->seed, rng_stream_train((uint32_t)n, 0, RNG_USE_DATA));
    if (d->task == TASK_CLASSIFY) {  // B examples drawn uniformly with replacement
        const ClassificationSet& set = d->train_set;
        for (int b = 0; b < d->B; b++) {
            size_t e = rng_hash_keyed(key, (uint32_t)b) % set.labels.size();
            classification_tokens(set.texts[e], d->T, &d->inputs[(size_t)b * d->T]);
            d->targets[b] = set.labels[e];
        }
        return true;
    }
    if (!dataloader_next_batch(&d->train_loader, n)) return false;
    if (d->task == TASK_MLM) {
        mlm_batch(d->train_loader.inputs.data(), d->T - 2, d->B, d->T, key, d->inputs.data(), d->targets.data());
    } else {
        d->inputs = d->train_loader.inputs;
        d->targets = d->train_loader.targets;
    }
    return true;
}

// validation batches in order: the first `max_batches` of the val shards, or every held-out example (the
// last batch padded with label -1 rows, which count nowhere); false when there are no more
static bool batches_next_val(Batches* d, int n, int max_batches) {
    if (d->task == TASK_CLASSIFY) {
        const ClassificationSet& set = d->val_set;
        if ((size_t)n * d->B >= set.labels.size()) return false;
        for (int b = 0; b < d->B; b++) {
            size_t e = std::min((size_t)n * d->B + b, set.labels.size() - 1);
            classification_tokens(set.texts[e], d->T, &d->inputs[(size_t)b * d->T]);
            d->targets[b] = (size_t)n * d->B + b < set.labels.size() ? set.labels[e] : -1;
        }
        return true;
    }
    if (n >= max_batches) return false;
    if (n == 0) dataloader_seek(&d->val_loader, 0, 0);
    if (!dataloader_next_batch(&d->val_loader)) return false;
    if (d->task == TASK_MLM) {
        uint32_t key = rng_key(d->seed, rng_stream_train((uint32_t)n, 2, RNG_USE_DATA));
        mlm_batch(d->val_loader.inputs.data(), d->T - 2, d->B, d->T, key, d->inputs.data(), d->targets.data());
    } else {
        d->inputs = d->val_loader.inputs;
        d->targets = d->val_loader.targets;
    }
    return true;
}

// ----------------------------------------------------------------------------------------------------------
// checkpoints: the model in llm.c's format (so its tools read ours and ours read its GPT-2 files) and a
// state file with everything else needed to resume bit for bit (formats and readers: kernels/model_file.h)

template <typename T> int model_precision(GPT<T>* model) {
    return model->int4 ? PRECISION_INT4 : std::is_same<T, float>::value ? PRECISION_FP32 : PRECISION_BF16;
}

// the model file holds llm.c's 16 tensors (+ the classifier); the state file all FP32 values (with the LSQ steps)
template <typename T> bool save_checkpoint(GPT<T>* model, const std::string& dir, const TrainState& st) {
    size_t n = model->num_parameters, total = n + model->num_lsq_steps;
    std::vector<float> master(total), m(total), v(total);
    cudaCheck(cudaMemcpy(master.data(), model->master_memory, total * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(m.data(), model->m_memory, total * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(v.data(), model->v_memory, total * sizeof(float), cudaMemcpyDeviceToHost));
    char path[1024];
    snprintf(path, sizeof path, "%s/model_%08d.bin", dir.c_str(), st.step);
    bool ok = write_model_file(path, model->config, std::is_same<T, float>::value ? MODEL_VERSION_FP32 : MODEL_VERSION_BF16,
                               master.data(), n);
    int32_t header[256];
    state_header(header, st, model->config, total);
    snprintf(path, sizeof path, "%s/state_%08d.bin", dir.c_str(), st.step);
    ok = ok && write_file_atomic(path, header, {{master.data(), total * 4}, {m.data(), total * 4}, {v.data(), total * 4}});
    return ok;
}

// the state file of the latest step in dir, or "" if there is none
static std::string latest_state_file(const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) return "";
    int best = -1;
    struct dirent* entry;
    while ((entry = readdir(d))) {
        int step;
        char tail;
        if (sscanf(entry->d_name, "state_%d.bi%c", &step, &tail) == 2 && tail == 'n' && strlen(entry->d_name) == 18 && step > best) best = step;
    }
    closedir(d);
    if (best < 0) return "";
    char path[1024];
    snprintf(path, sizeof path, "%s/state_%08d.bin", dir.c_str(), best);
    return path;
}

// loads master weights and moments; the state's config and precision must match the run's
template <typename T> bool load_state(GPT<T>* model, const char* path, TrainState* st) {
    int32_t header[256];
    long file_size;
    FILE* f = open_checked(path, header, STATE_MAGIC, "state file", &file_size);
    if (!f) return false;
    size_t n = model->num_parameters + model->num_lsq_steps;
    bool ok = false;
    if (state_header_check(header, file_size, model->config, model_precision(model), n, path)) {
        std::vector<float> buffer(n);
        ok = true;
        float* targets[3] = {model->master_memory, model->m_memory, model->v_memory};
        for (int i = 0; i < 3 && ok; i++) {
            ok = read_exact(f, buffer.data(), n * 4, path);
            if (ok) cudaCheck(cudaMemcpy(targets[i], buffer.data(), n * 4, cudaMemcpyHostToDevice));
            if (ok && i == 0 && !std::is_same<T, float>::value) upload_compute_copy(model, buffer.data());
        }
        *st = state_header_train_state(header);
        model->lsq_steps_initialised = true;  // the LSQ steps came from the file
    }
    fclose(f);
    return ok;
}

// ----------------------------------------------------------------------------------------------------------
// sampling: generate bytes from position 0 of row 0 with the shared hash (seed, stream = step)

template <typename T> void gpt_sample(GPT<T>* model, int length, uint32_t seed, int step, FILE* out) {
    const GPTConfig& cfg = model->config;
    size_t BT = (size_t)model->B * model->T_;
    std::vector<int> tokens(BT, '\n');
    std::vector<T> row(cfg.padded_vocab_size);
    std::vector<double> probs(cfg.vocab_size);
    uint32_t key = rng_key(seed ^ 0x53414d50u, (uint32_t)step);  // 'SAMP': a key no training draw uses
    length = std::min(length, model->T_ - 1);
    fprintf(out, "generating:\n---\n");
    for (int t = 1; t <= length; t++) {
        gpt_upload_batch(model, tokens.data(), nullptr);
        gpt_forward(model);
        cudaCheck(cudaMemcpyAsync(row.data(), model->acts.logits + (size_t)(t - 1) * cfg.padded_vocab_size,
                                  cfg.padded_vocab_size * sizeof(T), cudaMemcpyDeviceToHost, model->stream));
        cudaCheck(cudaStreamSynchronize(model->stream));
        double maxval = -1e30, sum = 0.0;
        for (int v = 0; v < cfg.vocab_size; v++) maxval = fmax(maxval, (double)(float)row[v]);
        for (int v = 0; v < cfg.vocab_size; v++) sum += (probs[v] = exp((double)(float)row[v] - maxval));
        double u = rng_uniform_from_bits(rng_hash_keyed(key, (uint32_t)t)) * sum, cdf = 0.0;
        int next = cfg.vocab_size - 1;
        for (int v = 0; v < cfg.vocab_size; v++) { cdf += probs[v]; if (u < cdf) { next = v; break; } }
        tokens[t] = next;
        if (cfg.vocab_size == 256) fputc(next, out); else fprintf(out, "[%d]", next);
    }
    fprintf(out, "\n---\n");
    fflush(out);
}

// ----------------------------------------------------------------------------------------------------------
// command line

struct TrainArgs {
    const char* train_pattern = "data/tinyshakespeare_train.bin";
    const char* val_pattern = "data/tinyshakespeare_val.bin";
    const char* model = "d6";        // descriptor dL, L:C:NH, or an llm.c model file
    const char* output_dir = nullptr;
    int B = 64, T = 256;
    long total_batch = -1;           // tokens per optimizer step over all ranks; -1 = B*T*ranks
    float learning_rate = 1e-3f, final_lr_fraction = 0.1f, weight_decay = 0.1f, grad_clip = 1.0f, dropout = 0.2f;
    int warmup = 100, max_steps = 1500;
    int val_every = 250, val_steps = 20, sample_every = 500, sample_length = 256;
    int checkpoint_every = 0, resume = 0;
    int max_bad_steps = 5;             // consecutive non-finite steps before stopping
    float spike_zscore = 0.0f;         // skip updates whose loss or grad norm z-score exceeds this (0 = off)
    int qstats_every = 0;              // INT4 telemetry every N steps (0 = off)
    int recompute = 0;                 // 1: GELU's output recomputed in the backward, 2: the layernorm outputs too;
                                       // 0 (unset): 2 in int4 mode (its quantized layers' inputs are not kept), else 1
    int vocab = 256;
    uint32_t seed = 1337;
    Precision precision = PRECISION_BF16;
    int hadamard_block = 32;           // INT4 mode
    float keep_ratio = 0.5f;
    const char* bf16_layers = "";      // comma-separated layer indices kept in BF16 in INT4 mode
    bool bert = false;                 // -m bert: the encoder (masked LM, or the classifier with -f)
    const char* task_train = nullptr;  // BERT fine-tuning: label<TAB>text files
    const char* task_val = nullptr;
    int ranks = 1;                     // -N: the built-in launcher's process (GPU) count
    int profile_steps = 0;             // -P: time every layer op over this many steps (after two warm-up steps)
};

static void print_usage(void) {
    printf("usage: ./train_int4 [flags]\n"
           "  -i <glob>   train shards (llm.c format)        default data/tinyshakespeare_train.bin\n"
           "  -j <glob>   validation shards                  default data/tinyshakespeare_val.bin\n"
           "  -e <model>  dL (L layers, GPT-2 widths), L:C:NH, or an llm.c model file   default d6\n"
           "  -o <dir>    output dir: log, checkpoints       default none\n"
           "  -b <int>    batch size B                       default 64\n"
           "  -t <int>    sequence length T                  default 256\n"
           "  -d <int>    tokens per optimizer step over all ranks (multiple of B*T*ranks: gradient accumulation)   default B*T*ranks\n"
           "  -l <float>  learning rate                      default 1e-3\n"
           "  -u <int>    warmup steps                       default 100\n"
           "  -c <float>  weight decay                       default 0.1\n"
           "  -D <float>  dropout on the residual branches   default 0.2 (tinyshakespeare is small)\n"
           "  -x <int>    optimizer steps                    default 1500\n"
           "  -v <int>    validate every N steps (0 = never) default 250\n"
           "  -m <int>    validation batches                 default 20\n"
           "  -m gpt|bert model: GPT (causal LM) or BERT encoder (masked LM; a classifier with -f)   default gpt\n"
           "  -f <file>   BERT fine-tuning: label<TAB>text training examples (-e: a pretrained model file)\n"
           "  -F <file>   BERT fine-tuning: held-out examples, scored every -v steps (loss, accuracy)\n"
           "  -s <int>    sample every N steps (0 = never; GPT only)   default 500\n"
           "  -g <int>    sample length (tokens)             default 256\n"
           "  -n <int>    checkpoint every N steps (0 = at the end only, with -o)  default 0\n"
           "  -y <0|1>    resume from the latest state file in -o   default 0\n"
           "  -K <int>    stop after K steps in a row with a NaN/Inf loss or gradient norm (skipped)   default 5\n"
           "  -R <1|2>    recompute in the backward instead of keeping: 1 GELU's output (llm.c's default),\n"
           "              2 GELU's and the layernorms' outputs (less memory)   default 2 with -p int4, else 1\n"
           "  -S <float>  skip updates whose loss or grad norm is a spike: z-score above this over the last 128\n"
           "              steps (0 = off)                   default 0\n"
           "  -p <mode>   precision: fp32 | bf16 | int4      default bf16\n"
           "  -q <int>    INT4: Hadamard block size 16 | 32 | 64 | 128        default 32\n"
           "  -r <float>  INT4: LSS keep ratio in (0, 1] (1 = exact bit split)  default 0.5\n"
           "  -k <list>   INT4: layers kept in BF16, e.g. 0,5 (first and last of d6)   default none\n"
           "  -Q <int>    INT4: quantization telemetry every N steps to qstats.log in -o (also -qstats N)   default 0\n"
           "  -V <int>    vocabulary size of the shards (256 bytes, 50257 GPT-2)   default 256\n"
           "  -z <int>    seed (init, sampling)              default 1337\n"
           "  -N <int>    data-parallel ranks, one process per GPU (NCCL; needs -o); under mpirun -np N its\n"
           "              ranks are used instead          default 1\n"
           "  -P <int>    per-op GPU time over this many steps, after 2 warm-up steps (CUDA events)   default 0\n"
           "  -h          this help\n");
}

static bool parse_long(const char* s, long* out) {
    char* end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

static bool parse_float(const char* s, float* out) {
    char* end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

__attribute__((format(printf, 1, 2))) static void die(const char* format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "error: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, " (see ./train_int4 -h)\n");
    va_end(args);
    exit(EXIT_FAILURE);
}

// every flag takes a value; integers must be whole numbers in range, floats finite
static TrainArgs parse_args(int argc, char** argv) {
    TrainArgs a;
    for (int i = 1; i < argc; i++) {
        const char* flag = !strcmp(argv[i], "-qstats") ? "-Q" : argv[i];
        if (!strcmp(flag, "-h")) { print_usage(); exit(EXIT_SUCCESS); }
        if (flag[0] != '-' || strlen(flag) != 2) die("unknown argument '%s'", flag);
        if (i + 1 >= argc) die("flag %s needs a value", flag);
        const char* value = argv[++i];
        long n = 0;
        float f = 0.0f;
        char c = flag[1];
        auto need_int = [&](long lo, long hi) {
            if (!parse_long(value, &n) || n < lo || n > hi) die("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, value);
        };
        auto need_float = [&](float lo, float hi) {
            if (!parse_float(value, &f) || f < lo || f > hi) die("%s expects a number in [%g, %g], got '%s'", flag, lo, hi, value);
        };
        switch (c) {
            case 'i': a.train_pattern = value; break;
            case 'j': a.val_pattern = value; break;
            case 'e': a.model = value; break;
            case 'o': a.output_dir = value; break;
            case 'b': need_int(1, 1 << 16); a.B = (int)n; break;
            case 't': need_int(1, 1 << 16); a.T = (int)n; break;
            case 'd': need_int(-1, 1L << 40); a.total_batch = n; break;
            case 'l': need_float(0.0f, 10.0f); a.learning_rate = f; break;
            case 'u': need_int(0, 1 << 30); a.warmup = (int)n; break;
            case 'c': need_float(0.0f, 10.0f); a.weight_decay = f; break;
            case 'D': need_float(0.0f, 0.9f); a.dropout = f; break;
            case 'x': need_int(1, 1 << 30); a.max_steps = (int)n; break;
            case 'v': need_int(0, 1 << 30); a.val_every = (int)n; break;
            case 'm':  // the model family by name, or (llm.c's meaning) the number of validation batches
                if (!strcmp(value, "gpt") || !strcmp(value, "bert")) { a.bert = value[0] == 'b'; break; }
                if (!parse_long(value, &n) || n < 1 || n > (1 << 30)) die("-m expects gpt, bert or a number of validation batches >= 1, got '%s'", value);
                a.val_steps = (int)n;
                break;
            case 'f': a.task_train = value; break;
            case 'N': need_int(1, 64); a.ranks = (int)n; break;
            case 'P': need_int(0, 1000); a.profile_steps = (int)n; break;
            case 'F': a.task_val = value; break;
            case 's': need_int(0, 1 << 30); a.sample_every = (int)n; break;
            case 'g': need_int(1, 1 << 16); a.sample_length = (int)n; break;
            case 'n': need_int(0, 1 << 30); a.checkpoint_every = (int)n; break;
            case 'y': need_int(0, 1); a.resume = (int)n; break;
            case 'K': need_int(1, 1 << 30); a.max_bad_steps = (int)n; break;
            case 'S': need_float(0.0f, 1e6f); a.spike_zscore = f; break;
            case 'Q': need_int(0, 1 << 30); a.qstats_every = (int)n; break;
            case 'V': need_int(2, 1 << 22); a.vocab = (int)n; break;
            case 'z': need_int(0, 0xffffffffL); a.seed = (uint32_t)n; break;
            case 'q':
                need_int(16, 128);
                if (n != 16 && n != 32 && n != 64 && n != 128) die("-q expects 16, 32, 64 or 128, got '%s'", value);
                a.hadamard_block = (int)n;
                break;
            case 'r':
                need_float(0.0f, 1.0f);
                if (f <= 0.0f) die("-r expects a keep ratio in (0, 1], got '%s'", value);
                a.keep_ratio = f;
                break;
            case 'k': a.bf16_layers = value; break;
            case 'R': need_int(1, 2); a.recompute = (int)n; break;
            case 'p':
                if (!strcmp(value, "fp32")) a.precision = PRECISION_FP32;
                else if (!strcmp(value, "bf16")) a.precision = PRECISION_BF16;
                else if (!strcmp(value, "int4")) a.precision = PRECISION_INT4;
                else die("-p expects fp32, bf16 or int4, got '%s'", value);
                break;
            default: die("unknown flag '%s'", flag);
        }
    }
    if (a.recompute == 0) a.recompute = a.precision == PRECISION_INT4 ? 2 : 1;
    if (a.learning_rate <= 0.0f) die("-l must be positive");
    if (a.total_batch != -1 && (a.total_batch <= 0 || a.total_batch % ((long)a.B * a.T) != 0)) {
        die("-d %ld is not a positive multiple of B*T", a.total_batch);
    }
    if (a.resume && !a.output_dir) die("-y 1 needs -o (the folder with the state files)");
    if (a.qstats_every > 0 && (a.precision != PRECISION_INT4 || !a.output_dir)) die("-qstats needs -p int4 and -o");
    if (a.task_train && !a.bert) die("-f %s: fine-tuning a classifier needs -m bert", a.task_train);
    if (a.task_val && !a.task_train) die("-F %s needs -f (the training examples)", a.task_val);
    if (a.bert && a.T < 3) die("-m bert needs -t >= 3 ([CLS], a token, [SEP])");
    if (a.bert && a.vocab != 256) die("-V %d: BERT's vocabulary is fixed (bytes + [CLS] [SEP] [MASK] [PAD])", a.vocab);
#ifndef MULTI_GPU
    if (a.ranks > 1) die("-N: this train_int4 was built without NCCL (NO_MULTI_GPU=1), so it runs on one GPU only");
#endif
    if (a.ranks > 1 && !a.output_dir) die("-N needs -o (the ranks meet through a file there; checkpoints go there)");
    return a;
}

// dL: L layers, C = 64·L up to 12 (d6: 384 wide), then GPT-2's d24 1024, d36 1280, d48 1600; NH = C / 64.
// L:C:NH spells out any shape.
static bool parse_model_descriptor(const char* s, GPTConfig* cfg, int vocab, int T) {
    int L = 0, C = 0, NH = 0;
    char tail;
    if (sscanf(s, "d%d%c", &L, &tail) == 1 && L > 0) {
        C = L <= 12 ? 64 * L : L == 24 ? 1024 : L == 36 ? 1280 : L == 48 ? 1600 : 0;
        if (C == 0) die("-e %s: use d1..d12, d24, d36, d48 or L:C:NH", s);
        NH = C / 64;
    } else if (sscanf(s, "%d:%d:%d%c", &L, &C, &NH, &tail) == 3) {
        if (L <= 0 || C <= 0 || NH <= 0 || C % NH != 0) die("-e %s: needs L, C, NH > 0 with NH dividing C", s);
    } else {
        return false;
    }
    *cfg = {std::max(T, 1024), vocab, CEIL_DIV(vocab, 128) * 128, L, NH, C};
    return true;
}

// ----------------------------------------------------------------------------------------------------------
// training

// -P's table: GPU milliseconds per step of every named range, most expensive first, and its share of the
// profiled steps' wall time. Ranges nest (a block contains its layers' ops), so shares add up to more than 100%.
static void print_op_profile(int steps, double seconds) {
    std::vector<std::pair<double, std::string>> rows;
    for (auto& [name, total] : op_profile.totals) rows.push_back({total.first / steps, name});
    std::sort(rows.begin(), rows.end(), std::greater<>());
    printf("per-op GPU time over %d steps (%.1f ms/step wall):\n%-28s %10s %8s %7s\n", steps, 1e3 * seconds / steps,
           "range", "ms/step", "calls", "share");
    for (auto& [ms, name] : rows) {
        printf("%-28s %10.3f %8.1f %6.1f%%\n", name.c_str(), ms, (double)op_profile.totals[name].second / steps,
               100.0 * ms / (1e3 * seconds / steps));
    }
}

// -qstats telemetry, per quantized linear, from the last micro-batch's activations and the current weights:
// relative quantization error ‖Q(vH)Hᵀ − v‖/‖v‖ at the learned step, the same without the Hadamard transform
// (at an LSQ initial step), the outlier ratio max|ṽ|/|s|, the steps, and the last backward's LSS kept
// fraction and variance proxy. One line per linear to `out` (qstats.log); synchronises (every N steps only).
template <typename T> void gpt_qstats(GPT<T>* model, int step, FILE* out) {
    const int N = model->B * model->T_, C = model->config.channels, g = model->hadamard_block;
    static const char* names[4] = {"qkv", "attproj", "fc", "fcproj"};
    std::vector<float> steps(model->num_lsq_steps), lss((size_t)model->config.num_layers * 8);
    cudaCheck(cudaMemcpy(steps.data(), model->lsq_steps, steps.size() * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(lss.data(), model->lss_stats, lss.size() * sizeof(float), cudaMemcpyDeviceToHost));
    double mean_x_had = 0.0, mean_x_plain = 0.0;
    int count = 0;
    for (int l = 0; l < model->config.num_layers; l++) {
        if (!linear_is_quantized(model, l)) continue;
        LayerActivations<T> la = layer_activations(model, l);
        ParameterTensors<T>& p = model->params;
        gelu_forward(la.fch_gelu, la.fch, (long)N * 4 * C, model->stream);  // one layer's buffer: recomputed
        if (model->recompute_layernorm) { block_layernorm(model, l, 1); block_layernorm(model, l, 2); }
        const T* inputs[4] = {la.ln1, la.atty, la.ln2, la.fch_gelu};
        const T* weights[4] = {p.qkvw + (size_t)l * 3 * C * C, p.attprojw + (size_t)l * C * C,
                               p.fcw + (size_t)l * 4 * C * C, p.fcprojw + (size_t)l * C * 4 * C};
        int Ks[4] = {C, C, C, 4 * C}, Ms[4] = {3 * C, C, 4 * C, C};
        for (int w = 0; w < 4; w++) {
            int offset = 2 * linear_number(l, w);
            float sx = fabsf(steps[offset]), sw = fabsf(steps[offset + 1]);
            QuantError xh = quant_error(inputs[w], N, Ks[w], g, sx, model->qstats_scratch, model->stream);
            QuantError xp = quant_error(inputs[w], N, Ks[w], 0, 0.0f, model->qstats_scratch, model->stream);
            QuantError wh = quant_error(weights[w], Ms[w], Ks[w], g, sw, model->qstats_scratch, model->stream);
            QuantError wp = quant_error(weights[w], Ms[w], Ks[w], 0, 0.0f, model->qstats_scratch, model->stream);
            fprintf(out, "s:%d l:%d lin:%s xerr:%.5f xerr_plain:%.5f werr:%.5f werr_plain:%.5f xout:%.3f wout:%.3f "
                    "sx:%.5g sw:%.5g kept:%.4f varproxy:%.4g\n", step, l, names[w], xh.relative_error, xp.relative_error,
                    wh.relative_error, wp.relative_error, xh.outlier_ratio, wh.outlier_ratio, sx, sw,
                    lss[offset], lss[offset + 1]);
            mean_x_had += xh.relative_error;
            mean_x_plain += xp.relative_error;
            count++;
        }
    }
    fflush(out);
    if (count > 0) {
        printf("qstats step %d: mean activation quantization error %.4f with Hadamard, %.4f without\n", step,
               mean_x_had / count, mean_x_plain / count);
    }
}


// SIGINT / SIGTERM: finish the step in flight, write a checkpoint (with -o), exit 0
static volatile sig_atomic_t stop_requested = 0;
static void request_stop(int) { stop_requested = 1; }

// spikes: z-score of a value against the last SPIKE_WINDOW accepted ones (llm.c's skip flags), once
// SPIKE_MIN_HISTORY are there; rejected values stay out of the window so a spike cannot hide the next one
#define SPIKE_WINDOW 128
#define SPIKE_MIN_HISTORY 32
struct SpikeDetector {
    std::vector<double> window;
    size_t next = 0;
    double zscore(double x) const {
        if (window.size() < SPIKE_MIN_HISTORY) return 0.0;
        double mean = 0.0, var = 0.0;
        for (double v : window) mean += v;
        mean /= window.size();
        for (double v : window) var += (v - mean) * (v - mean);
        double std = sqrt(var / window.size());
        return std > 0.0 ? (x - mean) / std : 0.0;
    }
    void add(double x) {
        if (window.size() < SPIKE_WINDOW) { window.push_back(x); return; }
        window[next] = x;
        next = (next + 1) % SPIKE_WINDOW;
    }
};

// fault injection for the tests: TRAIN_INT4_FAULT_NAN_STEPS="3,4" poisons those steps' gradients with a NaN,
// TRAIN_INT4_FAULT_SPIKE_STEPS="40" sets one gradient of those steps to 1e6 (a grad-norm spike)
static bool fault_at(const char* variable, int step) {
    const char* steps = getenv(variable);
    for (const char* c = steps; c && *c;) {
        char* end;
        long v = strtol(c, &end, 10);
        if (end == c) break;
        if (v == step) return true;
        c = *end ? end + 1 : end;
    }
    return false;
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// one data-parallel rank (mg: its rank and the communicator; one rank without -N or mpirun)
template <typename T> int train(const TrainArgs& args, MultiGpu* mg) {
    if (mg->rank != 0 && !freopen("/dev/null", "w", stdout)) return EXIT_FAILURE;  // rank 0 reports
    // model: descriptor or llm.c file
    GPTConfig cfg;
    std::vector<float> file_weights;
    bool from_file = !parse_model_descriptor(args.model, &cfg, args.bert ? BERT_VOCAB : args.vocab, args.T);
    if (from_file && !read_model_file(args.model, &cfg, &file_weights)) return EXIT_FAILURE;
    if (from_file && cfg.bert != (int)args.bert) {
        fprintf(stderr, "error: -e %s is a %s model; use -m %s\n", args.model, cfg.bert ? "BERT" : "GPT", cfg.bert ? "bert" : "gpt");
        return EXIT_FAILURE;
    }
    cfg.bert = args.bert;
    if (args.T > cfg.max_seq_len) {
        fprintf(stderr, "error: -t %d exceeds the model's maximum sequence length %d\n", args.T, cfg.max_seq_len);
        return EXIT_FAILURE;
    }
    int widest = args.precision == PRECISION_FP32 ? layernorm_max_channels<float>()
                                                  : layernorm_max_channels<__nv_bfloat16>();
    if (cfg.channels > widest) {
        fprintf(stderr, "error: -e %s: width C = %d is above the %d that LayerNorm holds in registers in %s mode\n",
                args.model, cfg.channels, widest, precision_names[args.precision]);
        return EXIT_FAILURE;
    }
    if (from_file && args.vocab != 256 && cfg.vocab_size != args.vocab) {  // -V given, and a model file that disagrees
        fprintf(stderr, "error: -V %d differs from the model file's vocabulary %d\n", args.vocab, cfg.vocab_size);
        return EXIT_FAILURE;
    }
    QuantConfig quant = {args.precision == PRECISION_INT4, args.hadamard_block, args.keep_ratio,
                         std::vector<char>(cfg.num_layers, 0)};
    if (quant.enabled) {
        if (cfg.channels % args.hadamard_block != 0) {
            fprintf(stderr, "error: -q %d: the width C = %d is not a multiple of the Hadamard block\n", args.hadamard_block,
                    cfg.channels);
            return EXIT_FAILURE;
        }
        for (const char* c = args.bf16_layers; *c;) {
            char* end;
            long layer = strtol(c, &end, 10);
            if (end == c || layer < 0 || layer >= cfg.num_layers || (*end && *end != ',')) {
                fprintf(stderr, "error: -k %s: expected comma-separated layer indices in [0, %d)\n", args.bf16_layers,
                        cfg.num_layers);
                return EXIT_FAILURE;
            }
            quant.layer_in_bf16[layer] = 1;
            c = *end ? end + 1 : end;
        }
    }
    // data, then the classifier's size from the task's labels
    Task task = !args.bert ? TASK_LM : args.task_train ? TASK_CLASSIFY : TASK_MLM;
    bool have_val = args.val_every > 0 && (task != TASK_CLASSIFY || args.task_val);
    Batches data;
    if (!batches_init(&data, task, task == TASK_CLASSIFY ? args.task_train : args.train_pattern,
                      task == TASK_CLASSIFY ? args.task_val : args.val_pattern, have_val, args.B, args.T, cfg.vocab_size,
                      args.seed)) {
        return EXIT_FAILURE;
    }
    int classes = (int)data.train_set.label_names.size();
    if (from_file && cfg.num_classes != 0 && cfg.num_classes != classes) {
        fprintf(stderr, "error: -e %s has a classifier with %d classes, %s needs %d (pretraining: none)\n", args.model,
                cfg.num_classes, task == TASK_CLASSIFY ? args.task_train : "masked-LM", classes);
        return EXIT_FAILURE;
    }
    cfg.num_classes = classes;
    // parameters: the init of the whole config (below); a model file replaces the tensors it has (a pretrained
    // encoder gets a freshly initialised classifier)
    size_t sizes[NUM_PARAMETER_TENSORS], n_params = 0;
    fill_parameter_sizes(sizes, cfg);
    for (size_t s : sizes) n_params += s;
    std::string out_dir = args.output_dir ? args.output_dir : "";
    // resuming: the latest state file must belong to this run (config, precision, size) before anything
    // is written or the GPU is touched
    std::string state_path = args.resume ? latest_state_file(out_dir) : "";
    if (args.resume) {
        if (state_path.empty()) {
            fprintf(stderr, "error: -y 1: no state_*.bin in %s\n", out_dir.c_str());
            return EXIT_FAILURE;
        }
        int32_t header[256];
        long file_size;
        FILE* f = open_checked(state_path.c_str(), header, STATE_MAGIC, "state file", &file_size);
        size_t total = n_params + (quant.enabled ? (size_t)cfg.num_layers * 8 : 0);
        bool ok = f && state_header_check(header, file_size, cfg, args.precision, total, state_path.c_str());
        if (f) fclose(f);
        if (!ok) return EXIT_FAILURE;
    }
    long total_batch = args.total_batch == -1 ? (long)args.B * args.T * mg->ranks : args.total_batch;
    if (total_batch % ((long)args.B * args.T * mg->ranks) != 0) {
        fprintf(stderr, "error: -d %ld is not a multiple of B*T*ranks = %ld\n", total_batch, (long)args.B * args.T * mg->ranks);
        return EXIT_FAILURE;
    }
    if (mg->ranks > 1 && out_dir.empty()) {
        fprintf(stderr, "error: %d ranks need -o (they meet through a file there; checkpoints go there)\n", mg->ranks);
        return EXIT_FAILURE;
    }
    if (!out_dir.empty()) {
        for (size_t i = 1; i <= out_dir.size(); i++) {  // mkdir -p
            if (i == out_dir.size() || out_dir[i] == '/') mkdir(out_dir.substr(0, i).c_str(), 0755);
        }
        struct stat folder;
        if (stat(out_dir.c_str(), &folder) != 0 || !S_ISDIR(folder.st_mode) || access(out_dir.c_str(), W_OK) != 0) {
            fprintf(stderr, "error: -o %s: cannot write %s/main.log (not a writable folder?)\n", out_dir.c_str(), out_dir.c_str());
            return EXIT_FAILURE;
        }
    }
    // the GPU, and enough memory for this model and batch
    int device_count = 0;
    if (cudaGetDeviceCount(&device_count) != cudaSuccess || device_count == 0) {
        fprintf(stderr, "error: no CUDA device found (train_int4 needs an NVIDIA GPU)\n");
        return EXIT_FAILURE;
    }
    cudaCheck(cudaSetDevice(mg->rank % device_count));
    cudaDeviceProp props;
    cudaCheck(cudaGetDeviceProperties(&props, mg->rank % device_count));
    ActivationTensors<T> scratch_acts;  // only sized here
    size_t need = n_params * (4 * 4 + (std::is_same<T, float>::value ? 0 : sizeof(T))) +
                  point_activations<T>(&scratch_acts, nullptr, cfg, args.B, args.T, args.recompute == 2) + CUBLASLT_WORKSPACE_SIZE + (64 << 20) +
                  (quant.enabled ? quant_scratch_bytes((long)args.B * args.T, 4 * cfg.channels) : 0);
    size_t free_bytes, total_bytes;
    cudaCheck(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (need > free_bytes) {
        fprintf(stderr, "error: this model and batch need %.2f GiB of GPU memory, %.2f GiB are free (lower -b or -t)\n",
                need / 1073741824.0, free_bytes / 1073741824.0);
        return EXIT_FAILURE;
    }
    FILE* log = nullptr;
    bool writer = mg->rank == 0;  // rank 0 writes the log and the checkpoints
    if (!out_dir.empty() && writer) {
        log = fopen((out_dir + "/main.log").c_str(), args.resume ? "a" : "w");
        if (!log) {
            fprintf(stderr, "error: -o %s: cannot write %s/main.log (not a writable folder?)\n", out_dir.c_str(), out_dir.c_str());
            return EXIT_FAILURE;
        }
    }
    FILE* qstats_log = nullptr;
    if (args.qstats_every > 0 && writer) {
        qstats_log = fopen((out_dir + "/qstats.log").c_str(), args.resume ? "a" : "w");
        if (!qstats_log) { fprintf(stderr, "error: cannot write %s/qstats.log\n", out_dir.c_str()); return EXIT_FAILURE; }
    }
    // the parameters, once the GPU is known to hold them (a large model's init takes a while on the host)
    std::vector<float> host_master(n_params);
    gpt_init_parameters(host_master.data(), sizes, cfg, args.seed);
    std::copy(file_weights.begin(), file_weights.end(), host_master.begin());
    if (!multi_gpu_init(mg, out_dir)) return EXIT_FAILURE;
    matmul_setup();
    GPT<T> model;
    gpt_build(&model, cfg, host_master.data(), args.B, args.T, quant, args.recompute == 2);
    model.seed = args.seed;
    TrainState state = {0, 0, 0, args.seed, (int)args.precision};
    if (args.resume) {
        if (!load_state(&model, state_path.c_str(), &state) ||
            (task != TASK_CLASSIFY && !dataloader_seek(&data.train_loader, state.shard, state.position))) {
            fprintf(stderr, "error: cannot resume from %s\n", state_path.c_str());
            return EXIT_FAILURE;
        }
        printf("resumed from %s at step %d\n", state_path.c_str(), state.step);
    }
    // micro-batches per rank and step; global micro-batch g = (step·grad_accum + micro)·ranks + rank, so N ranks
    // see the batches and RNG draws (dropout, MLM masks, INT4 rounding and LSS, all keyed by g) of one GPU
    // accumulating grad_accum·N micro-batches, micro-batch micro·N + rank there being g here
    int grad_accum = (int)(total_batch / ((long)args.B * args.T * mg->ranks));
    if (model.num_lsq_steps > 0 && !model.lsq_steps_initialised) {
        // INT4: the LSQ steps start from global micro-batch 0's statistics (one forward, linear_forward) on
        // every rank, so N ranks hold the same steps as one GPU, whatever each rank's first batch is
        long position = data.train_loader.position;
        if (!batches_next_train(&data, 0)) return EXIT_FAILURE;
        data.train_loader.position = position;
        gpt_upload_batch(&model, data.inputs.data(), data.targets.data());
        model.micro_step = 0;
        gpt_forward(&model, args.dropout);
    }
    float* step_sums = nullptr;  // (loss, stop flag) summed over ranks
    if (mg->ranks > 1) cudaCheck(cudaMalloc(&step_sums, 2 * sizeof(float)));
    OptimizerConfig opt = {args.learning_rate, 0.9f, 0.95f, 1e-8f, args.weight_decay, args.grad_clip};
    // flops per token: 6 per parameter (forward + backward) plus attention's q·k and att·v, 12·L·T·C
    double flops_per_token = 6.0 * n_params + 12.0 * cfg.num_layers * args.T * cfg.channels;
    const double peak_bf16_flops = 989e12;  // H100 SXM dense BF16
    printf("+-----------------------+----------------------------------------------------+\n");
    printf("| %-21s | %-50s |\n", "device", props.name);
    static const char* task_names[3] = {"GPT, next-token loss", "BERT, masked-LM loss", "BERT, classifier on [CLS]"};
    printf("| %-21s | %-50s |\n", "precision", precision_names[args.precision]);
    printf("| %-21s | %-50s |\n", "task", task_names[task]);
    printf("| %-21s | %-50s |\n", "train data", task == TASK_CLASSIFY ? args.task_train : args.train_pattern);
    printf("| %-21s | %-50s |\n", "val data", !have_val ? "(none)" : task == TASK_CLASSIFY ? args.task_val : args.val_pattern);
    printf("| %-21s | L=%d C=%d NH=%d V=%d Vp=%d maxT=%-19d |\n", "model", cfg.num_layers, cfg.channels,
           cfg.num_heads, cfg.vocab_size, cfg.padded_vocab_size, cfg.max_seq_len);
    printf("| %-21s | %-50zu |\n", "parameters", n_params);
    printf("| %-21s | B=%d T=%d ranks=%d accumulation=%d (%ld tokens/step)%*s |\n", "batch", args.B, args.T,
           mg->ranks, grad_accum, total_batch, 2, "");
    printf("| %-21s | lr %.3g, warmup %d, cosine to %.2g, wd %.2g, clip %.1f %*s |\n", "optimizer", args.learning_rate,
           args.warmup, args.final_lr_fraction, args.weight_decay, args.grad_clip, 4, "");
    printf("| %-21s | %-50.2f |\n", "dropout", args.dropout);
    printf("| %-21s | %-50d |\n", "steps", args.max_steps);
    printf("| %-21s | %-50s |\n", "recomputed (-R)", args.recompute == 2 ? "GELU and layernorm outputs" : "GELU output");
    printf("| %-21s | %-50.2f |\n", "GPU memory (GiB)", need / 1073741824.0);
    printf("+-----------------------+----------------------------------------------------+\n");
    if (task == TASK_CLASSIFY) {  // the accuracy to beat: always answering the training set's most frequent label
        std::vector<int> counts(classes, 0);
        for (int label : data.train_set.labels) counts[label]++;
        int majority = (int)(std::max_element(counts.begin(), counts.end()) - counts.begin());
        size_t hits = std::count(data.val_set.labels.begin(), data.val_set.labels.end(), majority);
        printf("classes: %d, %zu training and %zu held-out examples; majority class '%s' is %.1f%% of the held-out set\n",
               classes, data.train_set.labels.size(), data.val_set.labels.size(), data.train_set.label_names[majority].c_str(),
               data.val_set.labels.empty() ? 0.0 : 100.0 * hits / data.val_set.labels.size());
    }

    double loop_start = seconds_now();
    int first_step = state.step;
    int skipped = 0, skipped_before_streak = 0, spikes = 0;
    int profiled_steps = 0;  // -P
    double profiled_seconds = 0.0;
    SpikeDetector loss_spikes, norm_spikes;
    signal(SIGINT, request_stop);
    signal(SIGTERM, request_stop);
    for (int step = state.step; step <= args.max_steps; step++) {
        bool last = step == args.max_steps;
        if (have_val && writer && (step % args.val_every == 0 || last)) {
            double sum = 0.0;
            long predicted = 0, correct = 0;
            for (int i = 0; batches_next_val(&data, i, args.val_steps); i++) {
                gpt_upload_batch(&model, data.inputs.data(), data.targets.data());
                gpt_forward(&model);
                gpt_loss(&model, 0.0f);
                sum += (double)gpt_mean_loss(&model) * model.num_predicted;
                predicted += model.num_predicted;
                if (task == TASK_CLASSIFY) correct += gpt_correct_predictions(&model, data.targets.data());
            }
            double val_loss = sum / std::max(predicted, 1L);
            if (task == TASK_CLASSIFY) {
                printf("val loss %.4f | accuracy %.2f%% (%ld/%ld)\n", val_loss, 100.0 * correct / predicted, correct, predicted);
                if (log) { fprintf(log, "s:%d tel:%f acc:%f\n", step, val_loss, (double)correct / predicted); fflush(log); }
            } else {
                printf("val loss %.4f\n", val_loss);
                if (log) { fprintf(log, "s:%d tel:%f\n", step, val_loss); fflush(log); }
            }
        }
        if (task == TASK_LM && writer && args.sample_every > 0 && (step % args.sample_every == 0 || last) && step > 0) {
            gpt_sample(&model, args.sample_length, args.seed, step, stdout);
        }
        if (!out_dir.empty() && writer && step > first_step &&
            (last || (args.checkpoint_every > 0 && step % args.checkpoint_every == 0))) {
            state.step = step;
            state.shard = data.train_loader.shard;
            state.position = data.train_loader.position;
            if (!save_checkpoint(&model, out_dir, state)) fprintf(stderr, "warning: checkpoint at step %d not written\n", step);
        }
        if (last) break;
        double t0 = seconds_now();
        // -P: the steps whose ops are timed (not the first two: cuBLASLt heuristics and caches warm up there)
        op_profile.enabled = step >= first_step + 2 && step < first_step + 2 + args.profile_steps;
        gpt_zero_grad(&model);
        double loss = 0.0;
        for (int micro = 0; micro < grad_accum; micro++) {
            long g = ((long)step * grad_accum + micro) * mg->ranks + mg->rank;
            if (!batches_next_train(&data, g)) return EXIT_FAILURE;
            gpt_upload_batch(&model, data.inputs.data(), data.targets.data());
            model.micro_step = (uint32_t)g;
            gpt_forward(&model, args.dropout);
            gpt_loss(&model, gpt_grad_scale(&model, grad_accum * mg->ranks));
            loss += gpt_mean_loss(&model) / (grad_accum * mg->ranks);
            gpt_backward(&model);
        }
        bool stop = stop_requested;
        if (mg->ranks > 1) {  // gradients, the loss and any rank's stop request summed over ranks (FP32)
            float sums[2] = {(float)loss, stop ? 1.0f : 0.0f};
            cudaCheck(cudaMemcpyAsync(step_sums, sums, sizeof sums, cudaMemcpyHostToDevice, model.stream));
            multi_gpu_sum(mg, model.grads_memory, model.num_parameters + model.num_lsq_steps, model.stream);
            multi_gpu_sum(mg, step_sums, 2, model.stream);
            cudaCheck(cudaMemcpyAsync(sums, step_sums, sizeof sums, cudaMemcpyDeviceToHost, model.stream));
            cudaCheck(cudaStreamSynchronize(model.stream));
            loss = sums[0];
            stop = sums[1] > 0.0f;
        }
        if (qstats_log && step % args.qstats_every == 0) gpt_qstats(&model, step, qstats_log);
        if (fault_at("TRAIN_INT4_FAULT_NAN_STEPS", step + 1) || fault_at("TRAIN_INT4_FAULT_SPIKE_STEPS", step + 1)) {
            float poison = fault_at("TRAIN_INT4_FAULT_NAN_STEPS", step + 1) ? NAN : 1e6f;
            cudaCheck(cudaMemcpy(model.grads_memory, &poison, sizeof poison, cudaMemcpyHostToDevice));
        }
        float lr = learning_rate_at(step, args.warmup, args.max_steps, args.learning_rate, args.final_lr_fraction);
        float norm = gpt_grad_norm(&model);
        bool apply = true;  // a skipped update still ends the step (and honours a stop request)
        if (!isfinite(norm) || !isfinite(loss)) {  // never apply a NaN/Inf update: skip it and count
            apply = false;
            skipped++;
            printf("step %5d/%d | loss %f | norm %f | update skipped (%d in a row, %d in all)\n", step + 1,
                   args.max_steps, loss, norm, skipped - skipped_before_streak, skipped);
            if (skipped - skipped_before_streak >= args.max_bad_steps) {
                fprintf(stderr, "error: %d steps in a row had a non-finite loss or gradient norm; stopping. The weights "
                        "were never updated with them: the last checkpoint in -o (if any) is good\n", args.max_bad_steps);
                return EXIT_FAILURE;
            }
        } else {
            skipped_before_streak = skipped;
            double loss_z = loss_spikes.zscore(loss), norm_z = norm_spikes.zscore(norm);
            if (args.spike_zscore > 0.0f && (loss_z > args.spike_zscore || norm_z > args.spike_zscore)) {
                apply = false;
                spikes++;
                printf("step %5d/%d | loss %f | norm %f | update skipped: spike (loss z-score %.1f, grad norm z-score "
                       "%.1f, limit %.1f; %d spikes in all)\n", step + 1, args.max_steps, loss, norm, loss_z, norm_z,
                       args.spike_zscore, spikes);
            } else {
                loss_spikes.add(loss);
                norm_spikes.add(norm);
            }
        }
        if (apply) {
            gpt_update(&model, opt, lr, step + 1);
            cudaCheck(cudaStreamSynchronize(model.stream));
            double dt = seconds_now() - t0;
            double tokens_per_second = total_batch / dt;
            double elapsed = seconds_now() - loop_start;
            double eta = elapsed / (step - first_step + 1) * (args.max_steps - step - 1);
            printf("step %5d/%d | loss %.6f | norm %6.3f | lr %.2e | %7.1f ms | %9.0f tok/s | MFU %5.1f%% | ETA %4.0f s\n",
                   step + 1, args.max_steps, loss, norm, lr, dt * 1e3, tokens_per_second,
                   100.0 * flops_per_token * tokens_per_second / peak_bf16_flops, eta);
            if (log) { fprintf(log, "s:%d trl:%f\n", step, loss); fflush(log); }
        }
        if (op_profile.enabled) {
            op_profile.enabled = false;
            op_profile_collect();
            profiled_steps++;
            profiled_seconds += seconds_now() - t0;
        }
        if (stop) {
            printf("stop requested (signal): ");
            if (!out_dir.empty() && writer) {
                state.step = step + 1;
                state.shard = data.train_loader.shard;
                state.position = data.train_loader.position;
                bool saved = save_checkpoint(&model, out_dir, state);
                printf("%s at step %d in %s\n", saved ? "checkpoint written" : "checkpoint FAILED", step + 1, out_dir.c_str());
                if (!saved) return EXIT_FAILURE;
            } else {
                printf("no -o, nothing saved\n");
            }
            break;
        }
    }
    if (profiled_steps > 0) print_op_profile(profiled_steps, profiled_seconds);
    size_t free_now, total_now;
    cudaCheck(cudaMemGetInfo(&free_now, &total_now));
    printf("GPU memory in use: %.2f GiB\n", (total_now - free_now) / 1073741824.0);
    if (log) fclose(log);
    if (qstats_log) fclose(qstats_log);
    gpt_free(&model);
    if (step_sums) cudaCheck(cudaFree(step_sums));
    matmul_teardown();
    return EXIT_SUCCESS;
}

#ifndef TESTING
int main(int argc, char** argv) {
    TrainArgs args = parse_args(argc, argv);
    MultiGpu mg;  // one rank, unless mpirun started us or -N asks the built-in launcher for more
    if (!multi_gpu_from_mpirun(&mg) && args.ranks > 1 && !multi_gpu_fork(&mg, args.ranks)) return EXIT_FAILURE;
    int status = args.precision == PRECISION_FP32 ? train<float>(args, &mg) : train<__nv_bfloat16>(args, &mg);
    return multi_gpu_finish(&mg, status);
}
#endif
