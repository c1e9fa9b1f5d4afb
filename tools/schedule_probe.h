/* tools/schedule_probe.h - picking, by timing both, how a crosscoder training
   loop runs its steps on two threads: "one after the other" (the step on
   every thread, then the next batch's pairs drawn on every thread) or "at
   once" (the step on one thread while the other draws the next batch).
   Both give the same bits: a crosscoder step and a harvest give the same
   bits on one thread as on several. Which is faster depends on the widths
   and on the host. Used by examples/moexc_demo.c and tools/moexc_crosscoder.c.

   A source call (a harvester call, or a cache read) can yield more pairs
   than a batch, and then only every second (third, ...) step calls it. So
   the probe takes the two schedules in turn separately among the steps that
   call the source and those that do not, and weighs the two kinds by how
   often they came; plain alternation would put every source call on one
   schedule when they come every second step.

     schedule_probe p;
     schedule_probe_init(&p);
     each step (after a first, untimed one), where SCHEDULE_PROBE_APPLIES():
       together = schedule_probe_pick(&p, calls_source);
       ... the step, timed ...
       if (p.probing && schedule_probe_record(&p, together, calls_source, seconds))
           report p.seconds[0], p.seconds[1] and p.together */
#ifndef MOEXC_SCHEDULE_PROBE_H
#define MOEXC_SCHEDULE_PROBE_H
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SCHEDULE_PROBE_MIN 8            /* steps the probe times at least ... */
#define SCHEDULE_PROBE_MAX 16           /* ... and at most: until each kind of step ran both */

/* Whether the two schedules apply here: 2 or 3 OpenMP threads, outside any
   parallel region ("at once" runs the step and the drawing on one thread
   each). Without OpenMP, never. */
#ifdef _OPENMP
#define SCHEDULE_PROBE_APPLIES() (!omp_in_parallel() && (omp_get_max_threads() == 2 || omp_get_max_threads() == 3))
#else
#define SCHEDULE_PROBE_APPLIES() 0
#endif

typedef struct schedule_probe {
    int probing;                        /* still timing both schedules       */
    int together;                       /* the choice once done: at once     */
    /* [schedule: one after the other, at once][step calls the source: no, yes] */
    double sum_s[2][2];                 /* seconds                           */
    int steps[2][2];
    double seconds[2];                  /* once done: mean seconds a step    */
} schedule_probe;

static void schedule_probe_init(schedule_probe *p)
{
    memset(p, 0, sizeof(*p));
    p->probing = 1;
}

/* The schedule of the next step (1: at once), calls_source 0 or 1. */
static int schedule_probe_pick(const schedule_probe *p, int calls_source)
{
    if (!p->probing) return p->together;
    return (p->steps[0][calls_source] + p->steps[1][calls_source]) % 2;
}

/* Record a probed step. Returns 1 when that ends the probe: then
   p->seconds[] holds each schedule's mean seconds a step (the kinds of step
   weighed by how often they came; a kind met only once, so on one schedule,
   is left out of both) and p->together the faster one. */
static int schedule_probe_record(schedule_probe *p, int together, int calls_source, double seconds)
{
    int x, k, probed = 0, weighed = 0, both = 1;
    p->sum_s[together][calls_source] += seconds;
    p->steps[together][calls_source]++;
    for (k = 0; k < 2; k++) {
        probed += p->steps[0][k] + p->steps[1][k];
        if (p->steps[0][k] > 0 && p->steps[1][k] > 0) weighed += p->steps[0][k] + p->steps[1][k];
        else if (p->steps[0][k] + p->steps[1][k] > 0) both = 0;
    }
    if (probed < SCHEDULE_PROBE_MIN || (!both && probed < SCHEDULE_PROBE_MAX)) return 0;
    for (x = 0; x < 2; x++) {
        p->seconds[x] = 0.0;
        for (k = 0; k < 2; k++)
            if (p->steps[0][k] > 0 && p->steps[1][k] > 0)
                p->seconds[x] += p->sum_s[x][k] / p->steps[x][k] * (p->steps[0][k] + p->steps[1][k]) / weighed;
    }
    p->probing = 0;
    p->together = p->seconds[1] < p->seconds[0];
    return 1;
}

#endif
