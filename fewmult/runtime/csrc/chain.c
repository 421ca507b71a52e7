/* A plan's dense layers in one call (fm_dense_chain): an exported MLP's forward without a return to
 * Python between its products. Each layer is the product a step would run (the same kernels, the same
 * choices by size), its BN + sign compared inside the product where it has one, and the last layer's
 * sums through their scale and batch norm; the answers are the steps' own. A forward of Hou et al.'s
 * MLP at batch 64 spent about 20 us in Python around its five kernel calls (BENCHMARKS.md). */
#include <stdlib.h>

#include "fewmult_kernels.h"
#include "simd.h"

/* The rows a layer's product reads: float rows (the first layer) or the packed bits of the one before. */
typedef struct {
    const float *x;
    const uint64_t *bits;
    int64_t words;
} layer_input;

/* Layer l's sums (int32, or float32 for float rows; NULL where given thresholds) or bits (`next`). */
static void product(int threads, const fm_dense_layer *l, layer_input in, int64_t n, void *sums, uint64_t *next) {
    const int32_t *tau = next ? l->tau : NULL;
    const uint16_t *up = next ? l->up : NULL;
    if (in.x) {
        fm_amx_fixed_gemm(threads, in.x, n, l->k, l->tiles, l->ones, l->minus_tiles, l->minus_ones, l->o, sums,
                          (const float *)tau, up, next, l->words);
    } else if (n >= l->min_rows && n * l->o >= l->min_sums) {
        fm_amx_sign_gemm(threads, in.bits, n, in.words, l->tiles, l->ones, l->o, l->kblocks, (int32_t)l->k, sums, tau,
                         up, next, l->words);
    } else {
        int32_t *own = next ? malloc(sizeof(int32_t) * (size_t)(n * l->o)) : sums;
        fm_xnor_gemm(l->isa, threads, in.bits, n, l->packed, l->o, in.words, (int32_t)l->k, own);
        if (next) {
            fm_compare_pack(l->isa, threads, own, 0, n, l->o, tau, up, next, l->words);
            free(own);
        }
    }
}

void fm_dense_chain(int threads, const float *x, int64_t n, const fm_dense_layer *layers, int64_t count,
                    double *out) {
    layer_input in = {x, NULL, 0};
    uint64_t *held = NULL;
    for (int64_t i = 0; i < count; i++) {
        const fm_dense_layer *l = layers + i;
        if (i < count - 1) {
            uint64_t *next = aligned_alloc(64, sizeof(uint64_t) * (size_t)(n * l->words));
            product(threads, l, in, n, NULL, next);
            free(held);
            held = next, in = (layer_input){NULL, next, l->words};
            continue;
        }
        void *sums = malloc(4 * (size_t)(n * l->o)); /* int32 or float32 */
        product(threads, l, in, n, sums, NULL);
        fm_sums_affine(threads, sums, in.x != NULL, n, 1, l->o, l->scale, l->bias, l->a, l->b, NULL, NULL, NULL,
                       NULL, out);
        free(sums);
    }
    free(held);
}
