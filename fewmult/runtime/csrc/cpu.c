/* Which instruction sets this CPU has, and how many threads a kernel may use. */
#include "fewmult_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int detect_isa(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vpopcntdq"))
        return fm_amx_available() ? FM_AMX : FM_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))  /* every AVX2 CPU made has FMA3 */
        return FM_AVX2;
#endif
    return FM_PORTABLE;
}

/* Detected once: CPUID traps to the hypervisor in a virtual machine (29 us a call on this project's
 * machine), and kernels ask at every call. Racing threads store the same value. */
int fm_best_isa(void) {
    static volatile int best = -1;
    if (best < 0)
        best = detect_isa();
    return best;
}

int fm_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
