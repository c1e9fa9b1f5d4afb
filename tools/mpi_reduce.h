/* tools/mpi_reduce.h - data-parallel training for the tools (SPEC §9): the
   moexc_reduce hook over MPI_Allreduce, and what a tool does around it.

   Built with MPI only when MOEXC_MPI is defined (make MPI=1 compiles the
   tools with mpicc and -DMOEXC_MPI); otherwise every function here is the
   single-process stand-in (rank 0 of 1, no hook) and nothing needs MPI.

     tool_dp dp;
     tool_dp_init(&dp, &argc, &argv);   MPI_Init; ranks > 0 print nothing on stdout
     opts.reduce = dp.reduce;           zero when there is one process
     ... errors: tool_dp_exit(&dp, status) ends every rank (MPI_Abort when
         status != 0 and there are several ranks, so that no rank waits
         forever in a sum the failed rank will never join)
     tool_dp_same(&dp, bytes, n)        do all ranks hold the same bytes?
     tool_dp_exit(&dp, 0);              MPI_Finalize */
#ifndef MOEXC_TOOLS_MPI_REDUCE_H
#define MOEXC_TOOLS_MPI_REDUCE_H
#include "../moexc.h"
#include <stdio.h>
#include <string.h>
#include <limits.h>
#ifdef MOEXC_MPI
#define OMPI_SKIP_MPICXX 1     /* the C API only, also when compiled as C++ */
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

typedef struct tool_dp {
    int          rank, world;
    moexc_reduce reduce;       /* sum NULL with one process */
} tool_dp;

#ifdef MOEXC_MPI
/* moexc_reduce.sum: in-place MPI_Allreduce(MPI_SUM) over MPI_COMM_WORLD, in
   pieces of at most INT_MAX elements (MPI counts are int). */
static int tool_mpi_sum(void *buf, size_t n, int type, void *user)
{
    size_t size = type == MOEXC_REDUCE_F64 ? sizeof(double) : sizeof(float);
    char *p = (char *)buf;
    (void)user;
    while (n > 0) {
        int count = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, count, type == MOEXC_REDUCE_F64 ? MPI_DOUBLE : MPI_FLOAT,
                               MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        p += (size_t)count * size;
        n -= (size_t)count;
    }
    return 0;
}
#endif

static void tool_dp_init(tool_dp *dp, int *argc, char ***argv)
{
    memset(dp, 0, sizeof(*dp));
    dp->world = 1;
#ifdef MOEXC_MPI
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &dp->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dp->world);
    if (dp->world > 1) {
        dp->reduce.sum = tool_mpi_sum;
        dp->reduce.rank = dp->rank;
        dp->reduce.world = dp->world;
    }
    /* only rank 0 prints (errors still go to stderr on every rank) */
    if (dp->rank > 0 && !freopen("/dev/null", "w", stdout)) fputs("cannot silence stdout on this rank\n", stderr);
#else
    (void)argc; (void)argv;
#endif
}

/* Do all ranks hold the same n bytes? (FNV-1a 64, compared by min and max) */
static int tool_dp_same(const tool_dp *dp, const void *bytes, size_t n, unsigned long long *fingerprint)
{
    const unsigned char *b = (const unsigned char *)bytes;
    unsigned long long h = 0xCBF29CE484222325ULL, lo, hi;
    size_t i;
    for (i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001B3ULL; }
    if (fingerprint) *fingerprint = h;
    lo = hi = h;
#ifdef MOEXC_MPI
    if (dp->world > 1) {
        MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    }
#else
    (void)dp;
#endif
    return lo == hi;
}

/* The end of the tool: returns status for main to return. A failure with
   several ranks aborts them all (a failed rank never joins the next sum). */
static int tool_dp_exit(tool_dp *dp, int status)
{
#ifdef MOEXC_MPI
    if (status != 0 && dp->world > 1) {
        fflush(stdout);
        fprintf(stderr, "rank %d of %d: failed (status %d); ending all ranks\n", dp->rank, dp->world, status);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, status);
    }
    MPI_Finalize();
#else
    (void)dp;
#endif
    return status;
}
#endif
