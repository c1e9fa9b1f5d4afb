/* tests/test_schedule_probe.c - tools/schedule_probe.h, the probe that picks
   how the demo and moexc_crosscoder run a crosscoder step and the drawing of
   the next batch: one after the other, or at once on two threads.

   The probe is fed simulated step times: a step that calls the source (a
   harvest) costs more than one that does not, in both schedules, and the
   source is called every step, every second step (in either phase), every
   third step or never. The probe must pick the schedule with the lower mean
   cost over the run, take both schedules among each kind of step, and stop
   after SCHEDULE_PROBE_MIN to SCHEDULE_PROBE_MAX steps. */
#include "../tools/schedule_probe.h"
#include "harness.h"

/* Milliseconds of one simulated step. */
typedef struct sim_costs {
    double sequential_plain, sequential_harvest;   /* one after the other */
    double together_plain, together_harvest;       /* at once             */
} sim_costs;

static double sim_cost(const sim_costs *c, int together, int harvest)
{
    if (together) return harvest ? c->together_harvest : c->together_plain;
    return harvest ? c->sequential_harvest : c->sequential_plain;
}

/* Whether step s calls the source when it does so every `period` steps
   starting at `phase` (period 0: never). */
static int sim_harvests(int s, int period, int phase)
{
    return period > 0 && s % period == phase;
}

/* Run the probe to its end; returns the steps it took. */
static int sim_probe(schedule_probe *p, const sim_costs *c, int period, int phase, int picks[2][2])
{
    int s;
    memset(picks, 0, 4 * sizeof(int));
    schedule_probe_init(p);
    for (s = 0; s < 100; s++) {
        const int h = sim_harvests(s, period, phase), together = schedule_probe_pick(p, h);
        picks[h][together]++;
        if (schedule_probe_record(p, together, h, 1e-3 * sim_cost(c, together, h))) return s + 1;
    }
    return s;
}

/* The mean cost a step of schedule x over a long run. */
static double sim_mean(const sim_costs *c, int x, int period)
{
    double share = period > 0 ? 1.0 / period : 0.0;
    return share * sim_cost(c, x, 1) + (1.0 - share) * sim_cost(c, x, 0);
}

/* Harvests every second step, and at once wins on the mean, but only the
   harvesting steps favour one after the other: plain alternation would put
   every harvest on one schedule and pick wrongly. */
static void test_every_second_step(void)
{
    /* one after the other: step 2, harvest 4 on two threads; at once: the
       step alone on one thread 2.5, a harvest on one thread 4.5 beside it */
    const sim_costs c = { 2.0, 6.0, 2.5, 4.5 };
    int phase;
    for (phase = 0; phase < 2; phase++) {
        schedule_probe p;
        int picks[2][2], steps = sim_probe(&p, &c, 2, phase, picks);
        TH_CHECK(!p.probing, "phase %d: the probe ended (%d steps)", phase, steps);
        TH_CHECK(steps >= SCHEDULE_PROBE_MIN && steps <= SCHEDULE_PROBE_MAX, "phase %d: %d steps", phase, steps);
        TH_CHECK(p.together == 1, "phase %d: at once (%.2f ms a step) beats one after the other (%.2f)",
                 phase, sim_mean(&c, 1, 2), sim_mean(&c, 0, 2));
        TH_CHECK_NEAR(1e3 * p.seconds[0], sim_mean(&c, 0, 2), 1e-9, 1e-9, "one after the other, weighed");
        TH_CHECK_NEAR(1e3 * p.seconds[1], sim_mean(&c, 1, 2), 1e-9, 1e-9, "at once, weighed");
        TH_CHECK(picks[0][0] == picks[0][1] && picks[1][0] == picks[1][1],
                 "phase %d: each kind of step ran both schedules alike (%d/%d, %d/%d)",
                 phase, picks[0][0], picks[0][1], picks[1][0], picks[1][1]);
    }
}

/* The other way round: at once loses on the mean. */
static void test_every_second_step_sequential(void)
{
    const sim_costs c = { 2.0, 4.6, 2.5, 6.0 };
    schedule_probe p;
    int picks[2][2];
    sim_probe(&p, &c, 2, 1, picks);
    TH_CHECK(!p.probing && p.together == 0, "one after the other (%.2f) beats at once (%.2f)",
             sim_mean(&c, 0, 2), sim_mean(&c, 1, 2));
}

/* Every third step, every step, never: the choice follows the mean. */
static void test_other_periods(void)
{
    static const int periods[] = { 3, 1, 0 };
    const sim_costs c = { 2.0, 6.5, 2.6, 5.0 };   /* at once wins when harvests are frequent */
    int i;
    for (i = 0; i < 3; i++) {
        schedule_probe p;
        int picks[2][2], steps = sim_probe(&p, &c, periods[i], 0, picks), h;
        const int want = sim_mean(&c, 1, periods[i]) < sim_mean(&c, 0, periods[i]);
        TH_CHECK(!p.probing && steps <= SCHEDULE_PROBE_MAX, "period %d: ended after %d steps", periods[i], steps);
        TH_CHECK(p.together == want, "period %d: picked %d, the mean says %d (%.3f vs %.3f ms)", periods[i],
                 p.together, want, sim_mean(&c, 0, periods[i]), sim_mean(&c, 1, periods[i]));
        for (h = 0; h < 2; h++)
            TH_CHECK(picks[h][0] - picks[h][1] <= 1 && picks[h][1] - picks[h][0] <= 1,
                     "period %d: steps of kind %d ran %d / %d", periods[i], h, picks[h][0], picks[h][1]);
    }
}

/* A kind of step seen once cannot be timed both ways: the probe goes on to
   SCHEDULE_PROBE_MAX steps, then decides on the kinds both schedules ran. */
static void test_rare_kind(void)
{
    const sim_costs c = { 2.0, 6.0, 3.0, 4.0 };
    schedule_probe p;
    int picks[2][2], steps = sim_probe(&p, &c, 100, 0, picks);   /* a harvest on step 0 only */
    TH_CHECK(steps == SCHEDULE_PROBE_MAX, "%d steps", steps);
    TH_CHECK(!p.probing && p.together == 0, "with plain steps only timed both ways, one after the other (2.0 vs 3.0 ms)");
    TH_CHECK_NEAR(1e3 * p.seconds[0], 2.0, 1e-9, 1e-9, "one after the other: the plain steps alone");
    TH_CHECK_NEAR(1e3 * p.seconds[1], 3.0, 1e-9, 1e-9, "at once: the plain steps alone");
    TH_CHECK(schedule_probe_pick(&p, 1) == 0 && schedule_probe_pick(&p, 0) == 0, "the choice holds for every kind");
}

int main(void)
{
    TH_RUN(test_every_second_step);
    TH_RUN(test_every_second_step_sequential);
    TH_RUN(test_other_periods);
    TH_RUN(test_rare_kind);
    return th_summary();
}
