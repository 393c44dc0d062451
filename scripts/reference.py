"""
PyTorch reference for train_int4: the exact model and INT4 method (../shared/method.md) that train_int4.cu
implements, and a dump of one reference state that test_int4.cu compares against tensor by tensor.

    python3 scripts/reference.py --dump ref/dump.bin           # GPT, fp32 and int4 sections
    python3 scripts/reference.py --dump ref/dump.bin --device cuda
    python3 scripts/reference.py --dump ref/dump_bert.bin --model bert   # MLM and classifier

Runs on torch 1.13 (CPU, Debian's python3-torch) and torch 2.x (CUDA). Everything is FP32 except the
integer products (exact, done in float64) and a few float64 reductions named in comments.

The randomness (init, stochastic rounding, LSS draws) comes from rng_hash below, the same stateless hash as
kernels/rng.h, so the quantizer outputs here and in C/CUDA agree bit for bit. The quantizer arithmetic
mirrors kernels/int4_math.h operation for operation for the same reason.
"""
import argparse
import math
import os
import struct

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------
# shared hash (kernels/rng.h): lowbias32 mixer on uint32 values held in int64 tensors or Python ints.
# 32-bit products are split into 16-bit halves so nothing overflows int64.

MASK32 = 0xFFFFFFFF


def _mul32(x, c):
    return ((x * (c & 0xFFFF)) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def rng_mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def rng_key(seed, stream):
    return rng_mix32(rng_mix32((seed ^ 0x6A09E667) & MASK32) ^ (stream & MASK32))


def rng_hash_keyed(key, index):
    return rng_mix32((rng_mix32(index ^ key) + key) & MASK32)


def rng_hash(seed, stream, index):
    """seed, stream: Python ints or int64 tensors; index: int64 tensor of uint32 values."""
    return rng_hash_keyed(rng_key(seed, stream), index)


def rng_uniform_from_bits(bits):
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def rng_uniform(seed, stream, index):
    return rng_uniform_from_bits(rng_hash(seed, stream, index))


def rng_stream_init(tensor_index):
    return 0x80000000 | tensor_index


RNG_USE_DX_ROUND, RNG_USE_LSS_KEEP, RNG_USE_DW_ROUND, RNG_USE_DATA = 0, 1, 2, 3


def rng_stream_train(micro_step, linear_index, use):
    return ((micro_step & 0x1FFFF) << 14) | ((linear_index & 0xFFF) << 2) | (use & 3)


def rng_normal(seed, stream, n):
    """n standard normals by Box-Muller in float64 from draws 2i and 2i+1 (kernels/rng.h rng_normal)."""
    key = rng_key(seed, stream)
    i = torch.arange(n, dtype=torch.int64)
    u1 = ((rng_hash_keyed(key, (2 * i) & MASK32) >> 8).to(torch.float64) + 1.0) / 16777216.0
    u2 = (rng_hash_keyed(key, (2 * i + 1) & MASK32) >> 8).to(torch.float64) / 16777216.0
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.283185307179586 * u2)).to(torch.float32)


# ----------------------------------------------------------------------------------------------------------
# quantizer math (kernels/int4_math.h, kernels/int4_reference.h)

INT4_MIN, INT4_MAX = -8, 7
BITSPLIT_BASE, BITSPLIT_RANGE = 14.0, 98.0


def f32(v, like):
    return torch.tensor(v, dtype=torch.float32, device=like.device)


def hadamard_rows(x, g):
    """x · blockdiag(H_g, ...) along the last dimension; butterfly strides 1, 2, 4, ... then * 1/sqrt(g)."""
    shape = x.shape
    K = shape[-1]
    assert K % g == 0, f"K={K} is not a multiple of the Hadamard block {g}"
    y = x.reshape(-1, K // g, g)
    h = 1
    while h < g:
        y = y.reshape(y.shape[0], K // g, g // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2).reshape(-1, K // g, g)
        h *= 2
    return (y * f32(1.0 / math.sqrt(g), x)).reshape(shape)


def hadamard_matrix(g, dtype=torch.float64):
    """The normalised Sylvester matrix H_g, for the property tests."""
    H = torch.ones(1, 1, dtype=dtype)
    while H.shape[0] < g:
        H = torch.cat((torch.cat((H, H), 1), torch.cat((H, -H), 1)), 0)
    return H / math.sqrt(g)


def lsq_init_step(v):
    """s = 2 mean|v| / sqrt(7), the mean in float64."""
    return (2.0 * v.double().abs().mean() / math.sqrt(7.0)).to(torch.float32)


def quantize_int4(v, step_abs):
    return torch.clamp(torch.round(v / step_abs), INT4_MIN, INT4_MAX)


def lsq_in_range(v, step_abs):
    r = v / step_abs
    return (r >= INT4_MIN) & (r <= INT4_MAX)


def lsq_step_grad_term(v, step_abs):
    r = v / step_abs
    inside = torch.round(r) - r
    return torch.where(r < INT4_MIN, f32(INT4_MIN, v), torch.where(r > INT4_MAX, f32(INT4_MAX, v), inside))


def pack_int4(codes):
    """two codes per byte along the last dimension, element 2j in the low nibble"""
    c = codes.to(torch.int64) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def bitsplit_scale(absmax):
    return torch.where(absmax > 0, f32(BITSPLIT_RANGE, absmax) / torch.where(absmax > 0, absmax, f32(1.0, absmax)),
                       f32(0.0, absmax))


def bitsplit(g, per_row, seed, stream):
    """returns (operand = 14*high + low, high, low, scales); element (r, c) draws index r*cols + c"""
    rows, cols = g.shape
    if per_row:
        scale = bitsplit_scale(g.abs().amax(dim=1))
        x = g * scale[:, None]
    else:
        scale = bitsplit_scale(g.abs().max()).reshape(1)
        x = g * scale
    index = torch.arange(rows * cols, dtype=torch.int64, device=g.device).reshape(rows, cols)
    u = rng_uniform(seed, stream, index)
    high, low = bitsplit_halves(x, u)
    return BITSPLIT_BASE * high + low, high, low, scale


def bitsplit_halves(x, u):
    """high = round_half_even(x / 14), low = floor(x - 14*high + u); a low of 8 (rest = +7 and 7 + u rounded up
    to 8 in float32) carries into high, as kernels/int4_math.h's bitsplit_value does"""
    high = torch.round(x / BITSPLIT_BASE)
    low = torch.floor(x - BITSPLIT_BASE * high + u)
    carry = low > 7
    return torch.where(carry, high + 1, high), torch.where(carry, low - BITSPLIT_BASE, low)


def lss_scores(dy, x_hat):
    """score_i = ||dy_i|| * ||x_hat_i|| in float64, stored as float32"""
    return (dy.double().pow(2).sum(1).sqrt() * x_hat.double().pow(2).sum(1).sqrt()).to(torch.float32)


def lss_probabilities(scores, keep_ratio):
    """water-filling: p = min(1, c*score), sum p = keep_ratio*rows, score 0 -> p 0 (int4_reference.h)"""
    rows = scores.shape[0]
    target = float(keep_ratio) * rows
    nonzero = scores[scores > 0].double()
    if nonzero.numel() <= target:
        return (scores > 0).to(torch.float32)
    s = torch.sort(nonzero, descending=True).values
    suffix = torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0])
    k = torch.arange(s.numel(), dtype=torch.float64, device=s.device)
    c_all = (target - k) / suffix
    first = int(torch.nonzero(c_all * s <= 1.0)[0, 0])
    c = float(c_all[first])
    return torch.clamp(c * scores.double(), max=1.0).to(torch.float32)


def lss_keep(probs, seed, stream):
    index = torch.arange(probs.shape[0], dtype=torch.int64, device=probs.device)
    return rng_uniform(seed, stream, index) < probs


# ----------------------------------------------------------------------------------------------------------
# the quantized linear layer: HQ-MM forward, BS (+LSS) backward


class QuantContext:
    """what every quantized layer needs besides its tensors: the run's seed, the micro-step (for the RNG
    streams), the Hadamard block, the LSS keep ratio, and an optional recorder for layer 0's intermediates"""

    def __init__(self, seed, g, keep_ratio):
        self.seed, self.g, self.keep_ratio = seed, g, keep_ratio
        self.micro_step = 0
        self.record = None  # dict filled by linear 0 when set


class QuantLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, step_x, step_w, qctx, linear_index):
        g = qctx.g
        x_tilde, w_tilde = hadamard_rows(x, g), hadamard_rows(w, g)
        sx, sw = step_x.abs(), step_w.abs()
        qx, qw = quantize_int4(x_tilde, sx), quantize_int4(w_tilde, sw)
        acc = (qx.double() @ qw.double().t()).to(torch.float32)  # exact INT32 accumulation
        y = acc * (sx * sw) + b
        ctx.save_for_backward(x_tilde, w_tilde, qx, qw)
        ctx.steps = (step_x.detach().clone(), step_w.detach().clone())  # values; the parameter is a view
        ctx.qctx, ctx.linear_index, ctx.micro_step = qctx, linear_index, qctx.micro_step
        if qctx.record is not None and linear_index == 0:
            qctx.record.update({"x": x, "x_tilde": x_tilde, "w_tilde": w_tilde, "x_codes": qx, "w_codes": qw,
                                "x_packed": pack_int4(qx), "y": y})
        return y

    @staticmethod
    def backward(ctx, dy):
        x_tilde, w_tilde, qx, qw = ctx.saved_tensors
        step_x, step_w = ctx.steps
        qctx, g = ctx.qctx, ctx.qctx.g
        sx, sw = step_x.abs(), step_w.abs()
        seed = qctx.seed
        dy = dy.contiguous()
        N, M = dy.shape
        # ∇X path: per-row bit split (the reduction is over M, so row scales factor out), no sampling
        op_dx, high_dx, low_dx, scale_dx = bitsplit(
            dy, True, seed, rng_stream_train(ctx.micro_step, ctx.linear_index, RNG_USE_DX_ROUND))
        coef_dx = torch.where(scale_dx > 0, sw / torch.where(scale_dx > 0, scale_dx, f32(1.0, dy)), f32(0.0, dy))
        dx_hat = (op_dx.double() @ qw.double()).to(torch.float32) * coef_dx[:, None]
        # ∇W path: leverage score sampling of token rows, kept rows scaled by 1/p, one per-tensor bit split
        x_hat = qx * sx
        scores = lss_scores(dy, x_hat)
        probs = lss_probabilities(scores, qctx.keep_ratio)
        keep = lss_keep(probs, seed, rng_stream_train(ctx.micro_step, ctx.linear_index, RNG_USE_LSS_KEEP))
        dy_kept = torch.where(keep[:, None], dy / torch.where(keep, probs, f32(1.0, dy))[:, None], f32(0.0, dy))
        op_dw, high_dw, low_dw, scale_dw = bitsplit(
            dy_kept, False, seed, rng_stream_train(ctx.micro_step, ctx.linear_index, RNG_USE_DW_ROUND))
        coef_dw = torch.where(scale_dw > 0, sx / torch.where(scale_dw > 0, scale_dw, f32(1.0, dy)), f32(0.0, dy))
        dw_hat = (op_dw.double().t() @ qx.double()).to(torch.float32) * coef_dw
        # LSQ: straight-through masks in the transformed domain, step gradients with the LSQ scale 1/sqrt(n*7)
        dx = hadamard_rows(dx_hat * lsq_in_range(x_tilde, sx), g)
        dw = hadamard_rows(dw_hat * lsq_in_range(w_tilde, sw), g)
        dstep_x = ((dx_hat.double() * lsq_step_grad_term(x_tilde, sx).double()).sum()
                   / math.sqrt(x_tilde.numel() * 7.0)).to(torch.float32) * torch.sign(step_x)
        dstep_w = ((dw_hat.double() * lsq_step_grad_term(w_tilde, sw).double()).sum()
                   / math.sqrt(w_tilde.numel() * 7.0)).to(torch.float32) * torch.sign(step_w)
        db = dy.sum(0)
        if qctx.record is not None and ctx.linear_index == 0:
            qctx.record.update({"dy": dy, "dx_high": high_dx, "dx_low": low_dx, "dx_scale": scale_dx,
                                "lss_scores": scores, "lss_prob": probs, "lss_keep": keep,
                                "dw_high": high_dw, "dw_low": low_dw, "dw_scale": scale_dw.reshape(()),
                                "dx": dx, "dw": dw, "db": db, "dstep_x": dstep_x.reshape(()),
                                "dstep_w": dstep_w.reshape(())})
        return dx, dw, db, dstep_x.reshape(step_x.shape), dstep_w.reshape(step_w.shape), None, None


# ----------------------------------------------------------------------------------------------------------
# the GPT model, parameters in llm.c's order and shapes

PARAM_NAMES = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]
CLASSIFIER_NAMES = ["clsw", "clsb"]  # BERT fine-tuning head, after llm.c's tensors (init tensor 16, 17)
QUANT_LINEARS = ["qkv", "attproj", "fc", "fcproj"]  # linear index = layer * 4 + position in this list


class Config:
    def __init__(self, vocab_size=256, padded_vocab_size=256, max_seq_len=64, num_layers=2, num_heads=4,
                 channels=64, num_classes=0):
        self.V, self.Vp, self.maxT = vocab_size, padded_vocab_size, max_seq_len
        self.L, self.NH, self.C, self.num_classes = num_layers, num_heads, channels, num_classes


def param_shapes(cfg):
    L, C, Vp, maxT = cfg.L, cfg.C, cfg.Vp, cfg.maxT
    shapes = {"wte": (Vp, C), "wpe": (maxT, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C), "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C),
            "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
            "lnfw": (C,), "lnfb": (C,)}
    if cfg.num_classes > 0:
        shapes.update({"clsw": (cfg.num_classes, C), "clsb": (cfg.num_classes,)})
    return shapes


def init_params(cfg, seed):
    """GPT-2 init from the shared hash: tensor t uses stream rng_stream_init(t), element i normal draw i."""
    params = {}
    residual_std = 0.02 / math.sqrt(2 * cfg.L)
    for t, (name, shape) in enumerate(param_shapes(cfg).items()):
        n = math.prod(shape)
        if name in ("ln1w", "ln2w", "lnfw"):
            value = torch.ones(n)
        elif name.endswith("b"):
            value = torch.zeros(n)
        else:
            std = residual_std if name in ("attprojw", "fcprojw") else 0.02
            value = rng_normal(seed, rng_stream_init(t), n) * f32(std, torch.zeros(1))
        params[name] = value.reshape(shape)
    return params


def weight_decayed(name):
    return name in ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw", "clsw")


class Transformer:
    """functional GPT or BERT over a dict of leaf tensors; mode 'fp32' or 'int4' (the four block linears
    quantized). GPT: causal attention, LM loss on every position. BERT: bidirectional attention with [PAD]
    keys masked, MLM loss on the positions whose target is not -1, optional classifier on [CLS] (position 0)."""

    def __init__(self, cfg, params, mode, qctx=None, bert=False):
        self.cfg, self.mode, self.qctx, self.bert = cfg, mode, qctx, bert
        self.params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        if mode == "int4":
            self.params["lsq_steps"] = torch.zeros(cfg.L, 4, 2, device=params["wte"].device, requires_grad=True)
            self.steps_initialised = False

    def linear(self, x, layer, which, w, b):
        if self.mode == "fp32":
            return x @ w.t() + b
        p = self.params["lsq_steps"]
        if not self.steps_initialised:  # LSQ init at the first forward, in the transformed domain
            with torch.no_grad():
                p[layer, which, 0] = lsq_init_step(hadamard_rows(x, self.qctx.g))
                p[layer, which, 1] = lsq_init_step(hadamard_rows(w, self.qctx.g))
        return QuantLinearFunction.apply(x, w, b, p[layer, which, 0], p[layer, which, 1], self.qctx,
                                         layer * 4 + which)

    def encode(self, idx):
        """embeddings and the blocks, then the final layernorm: (B, T, C)"""
        cfg, P = self.cfg, self.params
        B, T = idx.shape
        C, NH = cfg.C, cfg.NH
        x = P["wte"][idx] + P["wpe"][:T]
        if self.bert:  # (B, 1, 1, T): every query may look at every non-padding key
            mask = (idx != TOKEN_PAD)[:, None, None, :]
        else:
            mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        for l in range(cfg.L):
            h = F.layer_norm(x, (C,), P["ln1w"][l], P["ln1b"][l], 1e-5).reshape(B * T, C)
            qkv = self.linear(h, l, 0, P["qkvw"][l], P["qkvb"][l]).reshape(B, T, 3, NH, C // NH)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, NH, T, hs)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // NH))
            att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B * T, C)
            x = x + self.linear(y, l, 1, P["attprojw"][l], P["attprojb"][l]).reshape(B, T, C)
            h = F.layer_norm(x, (C,), P["ln2w"][l], P["ln2b"][l], 1e-5).reshape(B * T, C)
            h = F.gelu(self.linear(h, l, 2, P["fcw"][l], P["fcb"][l]), approximate="tanh")
            x = x + self.linear(h, l, 3, P["fcprojw"][l], P["fcprojb"][l]).reshape(B, T, C)
        if self.mode == "int4":
            self.steps_initialised = True
        return F.layer_norm(x, (C,), P["lnfw"], P["lnfb"], 1e-5)

    def forward(self, idx, targets):
        """LM (GPT) or MLM (BERT) head tied to wte: logits (B, T, Vp), loss over the first V columns.
        Targets of -1 are ignored (BERT's unmasked positions); the mean is over the rest."""
        V = self.cfg.V
        logits = self.encode(idx) @ self.params["wte"].t()
        loss = F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def forward_classifier(self, idx, labels):
        """classifier on the final hidden state of [CLS]: logits (B, n_classes), mean cross-entropy"""
        P = self.params
        logits = self.encode(idx)[:, 0] @ P["clsw"].t() + P["clsb"]
        return logits, F.cross_entropy(logits, labels)


# BERT's special tokens, appended to the 256 byte tokens; vocab 260 padded to 384 (a multiple of 128)
TOKEN_CLS, TOKEN_SEP, TOKEN_MASK, TOKEN_PAD = 256, 257, 258, 259
BERT_VOCAB, BERT_PADDED_VOCAB = 260, 384
MLM_SELECT, MLM_USE_MASK, MLM_USE_RANDOM = 0.15, 0.8, 0.9


def mlm_mask(tokens, seed, micro_step):
    """BERT masking from the shared hash (stream: micro-step, linear 0, use 'data'). Position i of the
    flattened batch uses draws 3i (selected if < 0.15), 3i+1 (< 0.8: [MASK], < 0.9: random byte, else kept)
    and 3i+2 (the random byte, floor(u * 256)). Only byte tokens are selected. Returns (inputs, targets)
    with targets -1 where nothing is predicted."""
    stream = rng_stream_train(micro_step, 0, RNG_USE_DATA)
    i = torch.arange(tokens.numel(), dtype=torch.int64, device=tokens.device).reshape(tokens.shape)
    u_select, u_action, u_byte = (rng_uniform(seed, stream, (3 * i + j) & MASK32) for j in range(3))
    selected = (u_select < f32(MLM_SELECT, u_select)) & (tokens < 256)
    random_byte = torch.floor(u_byte * 256.0).to(torch.int64)
    replaced = torch.where(u_action < f32(MLM_USE_MASK, u_action), torch.full_like(tokens, TOKEN_MASK),
                           torch.where(u_action < f32(MLM_USE_RANDOM, u_action), random_byte, tokens))
    inputs = torch.where(selected, replaced, tokens)
    targets = torch.where(selected, tokens, torch.full_like(tokens, -1))
    return inputs, targets


class AdamW:
    """llm.c's AdamW: decoupled weight decay on 2-D weights only, global-norm clipping, bias correction"""

    def __init__(self, params, lr, beta1, beta2, eps, weight_decay, grad_clip):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta1, beta2, eps
        self.wd, self.clip, self.t = weight_decay, grad_clip, 0
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}

    @torch.no_grad()
    def step(self):
        self.t += 1
        norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in self.params.values())).to(torch.float32)
        scale = min(1.0, self.clip / float(norm)) if float(norm) > 0 else 1.0
        for name, p in self.params.items():
            g = p.grad * scale
            m, v = self.m[name], self.v[name]
            m.mul_(self.b1).add_(g * (1 - self.b1))
            v.mul_(self.b2).add_(g * g * (1 - self.b2))
            m_hat = m / (1 - self.b1 ** self.t)
            v_hat = v / (1 - self.b2 ** self.t)
            wd = self.wd if weight_decayed(name) else 0.0
            # LSQ steps are scale parameters: relative updates, lr·|s| (kernels/adamw.h says why)
            rate = self.lr * p.abs() if name == "lsq_steps" else self.lr
            p.sub_(rate * (m_hat / (torch.sqrt(v_hat) + self.eps) + wd * p))
            p.grad = None
        return norm


# ----------------------------------------------------------------------------------------------------------
# the dump (format documented in README.md)

DUMP_MAGIC, DUMP_VERSION = 20261123, 1
DTYPES = {torch.float32: 0, torch.int32: 1, torch.int8: 2, torch.uint8: 3}
DTYPE_U32 = 4


def float_bits(v):
    return struct.unpack("<i", struct.pack("<f", v))[0]


class DumpWriter:
    def __init__(self):
        self.records = []

    def add(self, name, tensor, dtype=None):
        t = tensor.detach().cpu()
        if dtype == DTYPE_U32:  # uint32 values held in int64
            data, code = t.to(torch.int64).numpy().astype("<u4").tobytes(), DTYPE_U32
        else:
            t = t.to(dtype) if dtype is not None else t
            data, code = t.contiguous().numpy().tobytes(), DTYPES[t.dtype]
        self.records.append((name, code, list(t.shape), data))

    def write(self, path, header_values):
        header = [0] * 256
        header[0], header[1] = DUMP_MAGIC, DUMP_VERSION
        for i, v in header_values.items():
            header[i] = v
        header[21] = len(self.records)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(struct.pack("<256i", *header))
            for name, code, dims, data in self.records:
                raw = name.encode()
                f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", code, len(dims)))
                f.write(struct.pack(f"<{len(dims)}i", *dims) + data)
        os.replace(tmp, path)


def rng_check_inputs(n):
    """the (seed, stream, index) triples of the RNG agreement test (test_int4.cu recomputes them)"""
    i = torch.arange(n, dtype=torch.int64)
    return 1234 + i % 3, i >> 10, (i * 2654435761) & MASK32


def run_mode(cfg, params, idx, targets, mode, task, args, dump, record_layer0, quant_seed=None):
    """10 AdamW steps on one batch; dumps step 0's logits, loss and gradients, and every step's loss.
    task: 'lm' (GPT), 'mlm' (BERT), 'cls' (BERT classifier, targets = labels); records are named
    '<mode>/...' for lm/mlm and 'cls_<mode>/...' for cls. dump None: only the losses are returned;
    quant_seed: another seed for the quantizers' stochastic rounding and LSS draws (init unchanged)."""
    prefix = f"cls_{mode}" if task == "cls" else mode
    bert = task in ("mlm", "cls")
    names = PARAM_NAMES + (CLASSIFIER_NAMES if task == "cls" else [])
    qseed = args.seed if quant_seed is None else quant_seed
    qctx = QuantContext(qseed, args.hadamard_block, args.keep_ratio) if mode == "int4" else None
    model = Transformer(cfg, {k: params[k] for k in names}, mode, qctx, bert)
    opt = AdamW(model.params, args.lr, 0.9, 0.95, 1e-8, 0.1, 1.0)
    losses = []
    for step in range(args.steps):
        if qctx is not None:
            qctx.micro_step = step
            qctx.record = {} if (record_layer0 and step == 0) else None
        if task == "cls":
            logits, loss = model.forward_classifier(idx, targets)
        else:
            logits, loss = model.forward(idx, targets)
        if step == 0 and mode == "int4" and dump is not None:
            dump.add(f"{prefix}/lsq_steps", model.params["lsq_steps"])
        loss.backward()
        if step == 0 and dump is not None:
            dump.add(f"{prefix}/logits", logits)
            dump.add(f"{prefix}/loss", loss)
            for name in names:
                dump.add(f"{prefix}/grad/{name}", model.params[name].grad)
            if mode == "int4":
                dump.add(f"{prefix}/grad/lsq_steps", model.params["lsq_steps"].grad)
            if qctx is not None and qctx.record is not None:
                for key, value in qctx.record.items():
                    dtype = {"x_codes": torch.int8, "w_codes": torch.int8, "dx_high": torch.int8,
                             "dx_low": torch.int8, "dw_high": torch.int8, "dw_low": torch.int8,
                             "lss_keep": torch.uint8}.get(key)
                    dump.add(f"int4/l0/{key}", value, dtype)
        losses.append(float(loss.detach()))
        opt.step()
        if dump is not None:
            print(f"{prefix} step {step}: loss {losses[-1]:.6f}")
    if dump is not None:
        dump.add(f"{prefix}/losses", torch.tensor(losses, dtype=torch.float32))
    if mode == "int4" and dump is not None:
        # the same 10 steps under 8 other draws of the quantizers' randomness: how far an int4 trajectory
        # moves when stochastic-rounding / LSS decisions change, which FP32 rounding differences can cause
        other = [run_mode(cfg, params, idx, targets, mode, task, args, None, False, args.seed + k) for k in range(1, 9)]
        dump.add(f"{prefix}/losses_resampled", torch.tensor(other, dtype=torch.float32))
    return losses


def bert_batch(text, B, T):
    """row b: [CLS], T - 2 - 4*(b % 3) bytes of text, [SEP], then [PAD] up to T (so the padding mask matters)"""
    rows = []
    for b in range(B):
        n = T - 2 - 4 * (b % 3)
        chunk = list(text[b * T: b * T + n])
        rows.append([TOKEN_CLS] + chunk + [TOKEN_SEP] + [TOKEN_PAD] * (T - 2 - n))
    return torch.tensor(rows, dtype=torch.int64)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dump", required=True, help="output file")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data",
                                                       "tinyshakespeare.txt"), help="text file, read as bytes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="gpt", choices=["gpt", "bert"])
    parser.add_argument("--classes", type=int, default=8, help="BERT classifier classes")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--hadamard-block", type=int, default=32, choices=[16, 32, 64, 128])
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rng-values", type=int, default=1000000)
    args = parser.parse_args()
    if args.channels % args.heads != 0:
        parser.error(f"--channels {args.channels} is not divisible by --heads {args.heads}")
    if args.channels % args.hadamard_block != 0:
        parser.error(f"--channels {args.channels} is not a multiple of --hadamard-block {args.hadamard_block}")
    if not 0.0 < args.keep_ratio <= 1.0:
        parser.error(f"--keep-ratio {args.keep_ratio} is outside (0, 1]")
    torch.manual_seed(0)  # nothing random should come from torch; this only guards against accidents
    bert = args.model == "bert"
    cfg = Config(vocab_size=BERT_VOCAB if bert else 256, padded_vocab_size=BERT_PADDED_VOCAB if bert else 256,
                 max_seq_len=max(64, args.seq), num_layers=args.layers, num_heads=args.heads,
                 channels=args.channels, num_classes=args.classes if bert else 0)
    with open(args.data, "rb") as f:
        text = f.read(args.batch * args.seq + 1)
    if len(text) < args.batch * args.seq + 1:
        raise SystemExit(f"{args.data}: {len(text)} bytes, need {args.batch * args.seq + 1}")
    params = {k: v.to(args.device) for k, v in init_params(cfg, args.seed).items()}

    dump = DumpWriter()
    seeds, streams, indices = rng_check_inputs(args.rng_values)
    dump.add("rng/hash", rng_hash(seeds, streams, indices), DTYPE_U32)
    dump.add("rng/uniform", rng_uniform(seeds, streams, indices))
    if bert:
        tokens = bert_batch(text, args.batch, args.seq).to(args.device)
        idx, targets = mlm_mask(tokens, args.seed, 0)  # one masked batch, reused by all 10 steps
        labels = torch.arange(args.batch, device=args.device) % args.classes
        dump.add("tokens", tokens, torch.int32)
        dump.add("labels", labels, torch.int32)
    else:
        tokens = torch.tensor(list(text), dtype=torch.int64, device=args.device)
        idx = tokens[:-1].reshape(args.batch, args.seq)
        targets = tokens[1:].reshape(args.batch, args.seq)
    dump.add("inputs", idx, torch.int32)
    dump.add("targets", targets, torch.int32)
    for name in param_shapes(cfg):
        dump.add(f"param/{name}", params[name])
    task = "mlm" if bert else "lm"
    run_mode(cfg, params, idx, targets, "fp32", task, args, dump, False)
    run_mode(cfg, params, idx, targets, "int4", task, args, dump, True)
    if bert:  # the classifier reads the unmasked sequences
        run_mode(cfg, params, tokens, labels, "fp32", "cls", args, dump, False)
        run_mode(cfg, params, tokens, labels, "int4", "cls", args, dump, False)
    header = {2: int(bert), 3: cfg.V, 4: cfg.Vp, 5: cfg.maxT, 6: cfg.L, 7: cfg.NH, 8: cfg.C, 9: args.batch,
              10: args.seq, 11: args.seed, 12: args.hadamard_block, 13: float_bits(args.keep_ratio),
              14: args.steps, 15: float_bits(args.lr), 16: float_bits(0.1), 17: float_bits(0.9),
              18: float_bits(0.95), 19: float_bits(1e-8), 20: float_bits(1.0)}
    dump.write(args.dump, header)
    print(f"wrote {args.dump} ({len(dump.records)} records)")


if __name__ == "__main__":
    main()
