/* Memory-bandwidth probe for imp-gguf bench: streaming read of a large buffer, multithreaded.
 *
 *   bandwidth [-t THREADS] [-s MIB] [-r REPEATS]
 *
 * Each thread first-touches and then repeatedly sums its own slice of one large buffer (8 independent
 * 64-bit accumulators so the loop is load-bound, not add-latency-bound). The best repeat is reported,
 * like STREAM does. Output: one JSON line on stdout. Build: cc -O2 -pthread [-static] bandwidth.c
 * Decode in llama.cpp is a streaming read of the weights, so this read-only figure is the roofline.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
    pthread_barrier_t *bar;
    int repeats;
    double *times;  /* per repeat, written by thread 0 */
} job_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t sum_slice(const uint64_t *p, size_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
        a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
    }
    for (; i < n; i++) a0 += p[i];
    return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

static void *worker(void *arg) {
    job_t *j = (job_t *)arg;
    memset((void *)j->p, 1, j->n * sizeof(uint64_t)); /* first touch: pages local to this thread */
    uint64_t s = 0;
    for (int r = 0; r < j->repeats; r++) {
        pthread_barrier_wait(j->bar);
        double t0 = now();
        s += sum_slice(j->p, j->n);
        pthread_barrier_wait(j->bar);
        if (j->times) j->times[r] = now() - t0;
    }
    j->sum = s;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    size_t mib = 1024;
    int repeats = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) mib = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) repeats = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [-s MIB] [-r REPEATS]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    if (repeats < 1) repeats = 1;
    size_t n = mib * 1024 * 1024 / sizeof(uint64_t);
    n -= n % (8 * (size_t)threads);
    uint64_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, n * sizeof(uint64_t)) != 0) {
        fprintf(stderr, "cannot allocate %zu MiB\n", mib);
        return 1;
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)threads);
    job_t *jobs = calloc((size_t)threads, sizeof(job_t));
    pthread_t *tids = calloc((size_t)threads, sizeof(pthread_t));
    double *times = calloc((size_t)repeats, sizeof(double));
    size_t per = n / (size_t)threads;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){buf + (size_t)t * per, per, 0, &bar, repeats, t == 0 ? times : NULL};
        pthread_create(&tids[t], NULL, worker, &jobs[t]);
    }
    uint64_t total = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        total += jobs[t].sum;
    }
    double best = times[0], sum = 0;
    for (int r = 0; r < repeats; r++) {
        if (times[r] < best) best = times[r];
        sum += times[r];
    }
    double bytes = (double)per * (double)threads * sizeof(uint64_t);
    printf("{\"probe\": \"stream-read\", \"threads\": %d, \"mib\": %zu, \"repeats\": %d, "
           "\"gbps\": %.3f, \"gbps_mean\": %.3f, \"checksum\": %llu}\n",
           threads, mib, repeats, bytes / best / 1e9, bytes * repeats / sum / 1e9, (unsigned long long)(total & 0xffff));
    return 0;
}
