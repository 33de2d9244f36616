/* MPI ring: the ranks pass a checksummed token around the ring once per iteration; every
 * rank mixes in its rank and the iteration number, and rank 0 checks the token against the
 * value it computes for itself. Rank 0 prints "tick I" per iteration, the final token, and
 * PASS (or FAIL with the iteration) -- the same bits as an uninterrupted run.
 *   ring ITERATIONS */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t mix(uint64_t h, uint64_t a, uint64_t b)
{
    h ^= a + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    h ^= b + (h >> 29);
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 32);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int r, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    long iters = argc > 1 ? atol(argv[1]) : 100;
    uint64_t token = 0x12345678, expect = 0x12345678;
    struct timespec pause = {0, 30 * 1000 * 1000L};
    for (long i = 1; i <= iters; i++) {
        if (r == 0) {
            token = mix(token, 0, (uint64_t)i);
            MPI_Send(&token, 1, MPI_UINT64_T, 1 % n, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_UINT64_T, n - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            for (int k = 0; k < n; k++) expect = mix(expect, (uint64_t)k, (uint64_t)i);
            if (token != expect) {
                printf("FAIL token %016llx, expected %016llx at iteration %ld\n",
                       (unsigned long long)token, (unsigned long long)expect, i);
                fflush(stdout);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            printf("tick %ld\n", i);
            fflush(stdout);
        } else {
            MPI_Recv(&token, 1, MPI_UINT64_T, r - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token = mix(token, (uint64_t)r, (uint64_t)i);
            MPI_Send(&token, 1, MPI_UINT64_T, (r + 1) % n, 0, MPI_COMM_WORLD);
        }
        nanosleep(&pause, NULL);
    }
    if (r == 0) {
        printf("token %016llx\nPASS\n", (unsigned long long)token);
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
