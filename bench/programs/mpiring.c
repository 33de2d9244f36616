/* mpiring: an Open MPI ring. Every 20 ms each rank passes a token to the next rank and
 * all ranks agree on an MPI_Allreduce of the step; rank 0 checks both and prints "tick N"
 * ("FAIL ..." on a wrong value). Built with mpicc; run with mpirun -np 4. */
#include <mpi.h>
#include <stdio.h>
#include <time.h>

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (long n = 1;; n++) {
        long token = 0, sum = 0, mine = n + rank;
        if (rank == 0) {
            token = n;
            MPI_Send(&token, 1, MPI_LONG, 1 % size, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_LONG, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token += rank;
            MPI_Send(&token, 1, MPI_LONG, (rank + 1) % size, 0, MPI_COMM_WORLD);
        }
        MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        if (rank == 0) {
            long want_token = n + (long)size * (size - 1) / 2;
            long want_sum = n * size + (long)size * (size - 1) / 2;
            if (token != want_token || sum != want_sum) {
                printf("FAIL step %ld: token %ld (want %ld), sum %ld (want %ld)\n", n, token,
                       want_token, sum, want_sum);
                MPI_Abort(MPI_COMM_WORLD, 2);
            }
            printf("tick %ld\n", n);
        }
        nanosleep(&ts, NULL);
    }
}
