"""The PyTorch side of `make bench`'s comparison, run on the same GPU as our numbers: GPT-2 shapes trained with
torch.compile, BF16 autocast, scaled_dot_product_attention (flash) and fused AdamW — the setup of issue 8's
anchors (vocab 50257 padded to 50304, random tokens, T = 1024, mean tok/s of steps 11-30, peak allocated memory).

    python3 scripts/bench_pytorch.py                  # d12 B=32, d24 B=16, d36 B=8
    python3 scripts/bench_pytorch.py --models d12:32  # one shape
Needs a CUDA build of PyTorch 2.x (it is not part of the CPU test suite).
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {"d12": (12, 768, 12), "d24": (24, 1024, 16), "d36": (36, 1280, 20)}  # layers, width, heads
VOCAB, PADDED_VOCAB, T = 50257, 50304, 1024


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T_, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T_, 3, self.NH, C // self.NH).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T_, C)
        x = x + self.proj(y)
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, C, NH):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(PADDED_VOCAB, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.lnf = nn.LayerNorm(C)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.weight.t()  # the tied head
        return F.cross_entropy(logits[..., :VOCAB].float().flatten(0, 1), targets.flatten())


def bench(name, B, steps):
    torch.manual_seed(0)
    model = GPT(*SHAPES[name]).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    step_fn = torch.compile(model)
    data = torch.randint(0, VOCAB, (B, T + 1), device="cuda")
    x, y = data[:, :-1], data[:, 1:]
    torch.cuda.reset_peak_memory_stats()
    rates = []
    for step in range(1, steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step > 10:
            rates.append(B * T / (time.perf_counter() - start))
    gib = torch.cuda.max_memory_allocated() / 2**30
    print(f"{name:6s} {B}x{T:<7d} {sum(rates) / len(rates):<12.0f} {gib:<10.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=["d12:32", "d24:16", "d36:8"])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}: torch.compile, bf16 autocast, SDPA, fused AdamW")
    print(f"{'model':6s} {'B x T':10s} {'tok/s':12s} {'GiB':10s}")
    for spec in args.models:
        name, batch = spec.split(":")
        bench(name, int(batch), args.steps)
