/* How fast this machine hands a process memory it has not touched before.
 *
 * Ingest keeps every unsealed event in memory, so a 10M-event load asks the
 * kernel for about 3 GB of new pages, zeroed on first touch. On a VM whose
 * balloon driver reports free pages back to the host, pages are often new to
 * the host as well, and the first touch is far slower than in a process that
 * reuses pages the guest freed a moment ago.
 *
 *     cc -O2 -o /tmp/first-touch benches/first-touch.c
 *     /tmp/first-touch 2048 1; /tmp/first-touch 2048 1; sleep 15; /tmp/first-touch 2048 1
 *
 * Arguments: MiB to map, and 1 to allow transparent huge pages (as mimalloc
 * does) or 0. Writes one byte per 4 KiB page and prints the rate. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    size_t n = (size_t)(argc > 1 ? atol(argv[1]) : 2048) << 20;
    int huge = argc > 2 ? atoi(argv[2]) : 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (huge) madvise(p, n, MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%zu MiB, huge pages %s: %.2f s = %.2f GB/s\n", n >> 20, huge ? "allowed" : "off", s, n / s / 1e9);
    return 0;
}
