"""
Property tests of the PyTorch reference itself (scripts/reference.py): the math it implements must have the
properties method.md claims, or bit-exact agreement with it would prove nothing. One line per check:
PASS / FAIL with the measured numbers; exit code 1 if any failed.

    python3 scripts/test_reference.py
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

failures = 0


def check(ok, name, detail):
    global failures
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    failures += 0 if ok else 1


def gaussian(shape, seed, stream):
    """test inputs from the shared hash too, so the suite is deterministic on any torch version"""
    n = math.prod(shape)
    return ref.rng_normal(seed, stream, n).reshape(shape)


def test_hadamard_orthogonal():
    for g in (16, 32, 64, 128):
        H = ref.hadamard_matrix(g)
        err = (H @ H.t() - torch.eye(g, dtype=torch.float64)).abs().max().item()
        check(err < 1e-12, f"H_{g} H_{g}^T = I", f"max |HH^T - I| = {err:.1e} (float64 rounding is ~1e-16)")
        # the butterfly in hadamard_rows is the same linear map as multiplying by blockdiag(H_g)
        x = gaussian((8, 2 * g), 7, g)
        dense = (x.double().reshape(8, 2, g) @ H).reshape(8, 2 * g)
        err = (ref.hadamard_rows(x, g).double() - dense).abs().max().item()
        # log2(g) <= 7 FP32 butterfly stages on values of size ~1: error below 7 * 2^-24 * |x|max * sqrt(g)
        bound = 7 * 2.0 ** -24 * x.abs().max().item() * math.sqrt(g)
        check(err <= bound, f"butterfly == dense H_{g}", f"max diff {err:.2e} (bound {bound:.2e})")
        back = ref.hadamard_rows(ref.hadamard_rows(x, g), g)
        err = (back - x).abs().max().item()
        check(err <= 2 * bound, f"H_{g} applied twice is the identity", f"max diff {err:.2e}")


def quantization_error(x, g):
    """relative Frobenius error of dequantize(quantize(x)) with the LSQ init step, plain and with Hadamard"""
    step = ref.lsq_init_step(x)
    plain = ref.quantize_int4(x, step) * step
    xt = ref.hadamard_rows(x, g)
    step_t = ref.lsq_init_step(xt)
    hq = ref.hadamard_rows(ref.quantize_int4(xt, step_t) * step_t, g)  # H is symmetric: H^T = H
    norm = x.norm().item()
    return (plain - x).norm().item() / norm, (hq - x).norm().item() / norm


def test_hadamard_lowers_outlier_error():
    # activations with a few outlier channels, as transformers have: 4 of 256 channels 30x larger
    x = gaussian((512, 256), 11, 1)
    x[:, [3, 70, 130, 201]] *= 30.0
    for g in (16, 32, 64, 128):
        plain, hq = quantization_error(x, g)
        # a demanding but safe margin: the transform should at least cut the error by a third here
        check(hq < 0.67 * plain, f"HQ beats plain LSQ with outliers (g={g})",
              f"relative error {hq:.3f} with Hadamard vs {plain:.3f} without")


def test_bitsplit_reconstruction():
    g = gaussian((64, 96), 3, 5) * torch.exp(gaussian((64, 1), 3, 6) * 2.0)  # rows of very different sizes
    for per_row in (True, False):
        operand, high, low, scale = ref.bitsplit(g, per_row, 99, 1234)
        s = scale[:, None] if per_row else scale
        err = ((operand / s - g).abs() * s).max().item()  # error in units of 1/s
        halves_ok = bool(high.abs().max() <= 7) and bool(low.min() >= -8) and bool(low.max() <= 7)
        label = "per-row" if per_row else "per-tensor"
        check(err < 1.0 and halves_ok, f"bit split {label}: |(14h+l)/s - g| < 1/s, halves in INT4",
              f"max error {err:.4f}/s, high in [{int(high.min())}, {int(high.max())}], "
              f"low in [{int(low.min())}, {int(low.max())}]")
    # the carry: x = 7 (a tie, rest = +7) with the largest uniform 1 - 2^-24 gives floor(7 + u) = 8 in float32,
    # which is not INT4; it must come out as high 1, low -6 (the same operand 8). At x = -7 the same u rounds
    # -7 + u up to -6 (no carry needed: -6 is INT4); u = 0.5 leaves x = 7 as high 0, low 7.
    high, low = ref.bitsplit_halves(torch.tensor([7.0, -7.0, 7.0]), torch.tensor([1.0 - 2.0**-24, 1.0 - 2.0**-24, 0.5]))
    check(high.tolist() == [1.0, 0.0, 0.0] and low.tolist() == [-6.0, -6.0, 7.0], "bit split carry at low = 8",
          f"x = 7, -7, 7 with u = 1-2^-24, 1-2^-24, 0.5: high {high.tolist()}, low {low.tolist()}")
    zero = torch.zeros(4, 8)
    operand, _, _, scale = ref.bitsplit(zero, True, 1, 2)
    check(bool((operand == 0).all()) and bool((scale == 0).all()), "bit split of zero rows",
          "all-zero rows give zero codes and scale 0 (no division by zero)")


def unbiasedness(estimates, exact, name):
    """mean over seeds within 4 standard errors of the exact value, element by element"""
    est = torch.stack(estimates).double()
    n = est.shape[0]
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    dev = (mean - exact.double()).abs()
    # elements with no randomness (se = 0) must be exact up to FP32 rounding of the dequantized product
    z = torch.where(se > 0, dev / torch.where(se > 0, se, torch.ones_like(se)), dev * 1e6)
    worst = z.max().item()
    # 4 standard errors: with ~10^3 elements the chance that a correct estimator exceeds it somewhere is <10%,
    # while a bias of a fraction of a code step (what a rounding or 1/p mistake causes) exceeds it everywhere
    check(worst < 4.5 if exact.numel() > 500 else worst < 4.0, name,
          f"{n} seeds, worst |mean - exact| = {worst:.2f} standard errors over {exact.numel()} elements")


def test_stochastic_rounding_unbiased():
    g = gaussian((32, 24), 5, 1)
    estimates = []
    for seed in range(1000):
        operand, _, _, scale = ref.bitsplit(g, True, seed, 77)
        estimates.append(operand / scale[:, None])
    unbiasedness(estimates, g, "bit split + stochastic rounding is unbiased")


def test_lss_unbiased():
    # the ∇W estimate of the quantized layer: E[estimate] = dY^T X_hat exactly, for keep ratios 0.5 and 0.25
    N, M, K = 64, 8, 16
    dy = gaussian((N, M), 21, 1) * torch.exp(gaussian((N, 1), 21, 2))  # uneven row norms, as gradients have
    dy[5] = 0.0  # a zero row must be dropped, never divided by p = 0
    x_hat = torch.round(gaussian((N, K), 21, 3) * 2.0).clamp(-8, 7)
    exact = dy.t() @ x_hat
    for keep_ratio in (0.5, 0.25):
        probs = ref.lss_probabilities(ref.lss_scores(dy, x_hat), keep_ratio)
        check(abs(float(probs.double().sum()) - keep_ratio * N) < 1e-4 and float(probs.max()) <= 1.0
              and float(probs[5]) == 0.0, f"water-filling sums to rho*N (rho={keep_ratio})",
              f"sum p = {float(probs.sum()):.5f}, target {keep_ratio * N}, max p {float(probs.max()):.3f}")
        estimates = []
        for seed in range(1000):
            keep = ref.lss_keep(probs, seed, 1)
            kept = torch.where(keep[:, None], dy / torch.where(keep, probs, torch.ones(1))[:, None],
                               torch.zeros(1))
            operand, _, _, scale = ref.bitsplit(kept, False, seed, 2)
            estimates.append((operand.t() @ x_hat) / scale if float(scale) > 0 else torch.zeros(M, K))
        unbiasedness(estimates, exact, f"LSS + bit split dW estimate is unbiased (rho={keep_ratio})")


def test_quant_linear_backward_unbiased():
    # end to end through QuantLinearFunction: the mean over seeds of dX and dW equals the straight-through
    # gradient of the quantized forward, computed in float64 without any gradient quantization
    N, K, M, g = 32, 32, 16, 16
    x = gaussian((N, K), 31, 1)
    w = gaussian((M, K), 31, 2) * 0.2
    dy = gaussian((N, M), 31, 3)
    step_x = ref.lsq_init_step(ref.hadamard_rows(x, g))
    step_w = ref.lsq_init_step(ref.hadamard_rows(w, g))
    xt, wt = ref.hadamard_rows(x, g), ref.hadamard_rows(w, g)
    x_hat = (ref.quantize_int4(xt, step_x) * step_x).double()
    w_hat = (ref.quantize_int4(wt, step_w) * step_w).double()
    H = torch.block_diag(*[ref.hadamard_matrix(g)] * (K // g))
    exact_dx = ((dy.double() @ w_hat) * ref.lsq_in_range(xt, step_x)) @ H
    exact_dw = ((dy.double().t() @ x_hat) * ref.lsq_in_range(wt, step_w)) @ H
    dxs, dws = [], []
    for seed in range(1000):
        qctx = ref.QuantContext(seed, g, 0.5)
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = ref.QuantLinearFunction.apply(xs, ws, torch.zeros(M), step_x, step_w, qctx, 0)
        y.backward(dy)
        dxs.append(xs.grad)
        dws.append(ws.grad)
    unbiasedness(dxs, exact_dx, "QuantLinear dX (bit split) is unbiased")
    unbiasedness(dws, exact_dw, "QuantLinear dW (LSS rho=0.5 + bit split) is unbiased")


def test_lsq_step_gradient():
    # hand-checked: s = 0.5, v/s = 0.6, -2.4, 10, -18 -> terms round(r) - r = 0.4, 0.4; clipped 7, -8
    v = torch.tensor([0.3, -1.2, 5.0, -9.0])
    terms = ref.lsq_step_grad_term(v, torch.tensor(0.5))
    expected = torch.tensor([0.4, 0.4, 7.0, -8.0])
    err = (terms - expected).abs().max().item()
    check(err < 1e-6, "LSQ step-gradient terms on hand-checked values", f"{terms.tolist()} vs {expected.tolist()}")
    mask = ref.lsq_in_range(v, torch.tensor(0.5))
    check(mask.tolist() == [True, True, False, False], "LSQ straight-through mask", f"{mask.tolist()}")
    # through QuantLinearFunction: x̃ = v (in the first 4 of 16 positions), W̃ = a ±1 matrix with step 1, and
    # dY = 1 on 4 outputs. A row of equal values bit-splits exactly (x = 98, no stochastic rounding), so
    # dX̂ = dY·q(W̃) exactly and the step gradient must equal sum(dX̂ * term) / sqrt(n * 7) to FP32 rounding.
    g = 16
    x = torch.zeros(1, g)
    x[0, :4] = v
    x_in = ref.hadamard_rows(x, g)  # H·H = I, so the layer's transformed input is v again (to an ulp)
    w = 4.0 * torch.eye(g)  # W̃ = 4·H_16: entries ±1, codes ±1 at step 1
    qctx = ref.QuantContext(0, g, 1.0)
    step_x, step_w = torch.tensor(0.5, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    y = ref.QuantLinearFunction.apply(x_in, w, torch.zeros(g), step_x, step_w, qctx, 0)
    dy = torch.zeros(1, g)
    dy[0, :4] = 1.0
    y.backward(dy)
    qw = ref.quantize_int4(ref.hadamard_rows(w, g), torch.tensor(1.0))
    dx_hat = dy.double() @ qw.double()
    terms = ref.lsq_step_grad_term(ref.hadamard_rows(x_in, g), torch.tensor(0.5)).double()
    expected = float((dx_hat * terms).sum()) / math.sqrt(g * 7)
    got = float(step_x.grad)
    # the only differences are FP32 roundings of x̃ (an ulp) and of 98·(1/98): 1e-5 relative is ample
    check(abs(expected) > 0.1 and abs(got - expected) <= 1e-5 * abs(expected),
          "LSQ step gradient through QuantLinear", f"{got:.6f} vs formula {expected:.6f}")


def test_mlm_masking():
    # BERT masking from the shared hash: 15% of byte positions selected, of those 80% [MASK], 10% random, 10% kept;
    # special tokens never selected. With 10^5 positions the binomial standard deviation of the 15% rate is
    # 0.11 points and of the 80% share 0.33 points: 5 standard deviations give the tolerances below.
    B, T = 100, 1000
    tokens = (torch.arange(B * T) % 256).reshape(B, T)
    tokens[:, 0], tokens[:, -1] = ref.TOKEN_CLS, ref.TOKEN_SEP
    inputs, targets = ref.mlm_mask(tokens, 42, 3)
    selected = targets >= 0
    rate = float(selected.double().mean()) / (1 - 2 / T)
    masked = float((inputs[selected] == ref.TOKEN_MASK).double().mean())
    kept = float((inputs[selected] == tokens[selected]).double().mean())
    check(abs(rate - 0.15) < 0.0056 and abs(masked - 0.8) < 0.017 and abs(kept - 0.1 - 0.1 / 256) < 0.013
          and not bool(selected[:, 0].any()) and not bool(selected[:, -1].any())
          and bool((targets[selected] == tokens[selected]).all()) and bool((inputs[~selected] == tokens[~selected]).all()),
          "MLM masking rates and invariants",
          f"selected {rate:.4f}, [MASK] {masked:.4f}, kept {kept:.4f}; specials never selected, targets = originals")
    again, _ = ref.mlm_mask(tokens, 42, 3)
    other, _ = ref.mlm_mask(tokens, 42, 4)
    check(bool((again == inputs).all()) and not bool((other == inputs).all()), "MLM masking is a function of (seed, step)",
          "same draw for the same micro-step, a different one for the next")


def main():
    print(f"test_reference: torch {torch.__version__}")
    test_hadamard_orthogonal()
    test_hadamard_lowers_outlier_error()
    test_bitsplit_reconstruction()
    test_stochastic_rounding_unbiased()
    test_lss_unbiased()
    test_quant_linear_backward_unbiased()
    test_lsq_step_gradient()
    test_mlm_masking()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
