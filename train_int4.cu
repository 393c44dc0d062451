// train_int4: GPT/BERT training with every linear-layer matmul in INT4 (Xi et al., 2023).
// Placeholder until the trainer lands (issue: the GPT trainer in FP32 and BF16): prints the plan and exits.
#include <stdio.h>

#ifndef TESTING
int main(void) {
    printf("train_int4: the trainer is not written yet. Plan:\n"
           "  1. GPT in FP32/BF16 matching scripts/reference.py (train_int4.cu, kernels/)\n"
           "  2. INT4 kernels: Hadamard-quantize, INT4 GEMM on s8 tensor cores, bit split, LSS (kernels/, dev/)\n"
           "  3. INT4 training mode, then BERT, reliability and multi-GPU\n");
    return 0;
}
#endif
