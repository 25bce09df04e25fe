/* The arithmetic peak of one core: twelve independent chains of AVX512-BF16 `vdpbf16ps` (16 f32
 * lanes, each adding two bfloat16 products: 64 flops an instruction), then of f32 FMAs (32 flops),
 * on zmm registers, timed with the monotonic clock. The floor of a training step is its flops
 * over this peak times the cores (docs/performance.md, "The arithmetic floor").
 *
 *   gcc -O2 -mavx512f -mavx512bf16 bench/peak.c -o /tmp/peak && /tmp/peak
 *   (/tmp/peak & /tmp/peak; wait)      # both cores at once
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12
#define ROUNDS 200000000L
/* Written out, so that the twelve accumulators stay in registers. */
#define TWELVE(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)

static double seconds_since(struct timespec start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start.tv_sec) + 1e-9 * (now.tv_nsec - start.tv_nsec);
}

/* Prints the rate of `ROUNDS` rounds of `CHAINS` instructions of `flops` each in `seconds`, with
 * the sum of the accumulators so that the compiler keeps the work. */
static void report(const char *what, double seconds, double flops, const __m512 *acc) {
    float sum = 0;
    for (int k = 0; k < CHAINS; k++) sum += _mm512_reduce_add_ps(acc[k]);
    printf("%s %.1f GFLOP/s on one core (%.3f s, checksum %g)\n", what,
           ROUNDS * CHAINS * flops / seconds / 1e9, seconds, sum);
}

static void bf16_peak(void) {
    __m512 acc[CHAINS];
    for (int k = 0; k < CHAINS; k++) acc[k] = _mm512_setzero_ps();
    __m512bh one = (__m512bh)_mm512_set1_epi16(0x3f80);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < ROUNDS; i++) {
#define DOT(k) acc[k] = _mm512_dpbf16_ps(acc[k], one, one);
        TWELVE(DOT)
        __asm__ volatile("" : "+v"(one));
    }
    report("vdpbf16ps:", seconds_since(start), 64, acc);
}

static void f32_peak(void) {
    __m512 acc[CHAINS];
    for (int k = 0; k < CHAINS; k++) acc[k] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1e-9f);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < ROUNDS; i++) {
#define FMA(k) acc[k] = _mm512_fmadd_ps(x, x, acc[k]);
        TWELVE(FMA)
        __asm__ volatile("" : "+v"(x));
    }
    report("f32 FMA:  ", seconds_since(start), 32, acc);
}

int main(void) {
    bf16_peak();
    f32_peak();
    return 0;
}
