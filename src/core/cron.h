/*
 * cron.h -- cron expressions and time zones, as pure functions: when a recurring schedule's
 * next tick falls (docs/recurring.md).
 *
 * An expression has six fields, seconds first (five are accepted, seconds then 0):
 *
 *   second minute hour day-of-month month day-of-week
 *   0-59   0-59   0-23 1-31         1-12  0-7 (0 and 7: Sunday)
 *
 * Each field is a comma-separated list of `*`, `N`, `N-M`, each optionally `/step`
 * (`N/step` means N to the field's end). Months take JAN..DEC and days SUN..SAT, in any case.
 * The macros @yearly (@annually), @monthly, @weekly, @daily (@midnight) and @hourly stand
 * for their usual six fields; a macro is the whole expression. Day-of-month and day-of-week follow Vixie cron: when both are
 * restricted (neither starts with `*`) a day matches if either matches; otherwise both must.
 *
 * Time zones come from the system's tz database (TZif files under /usr/share/zoneinfo,
 * Debian's tzdata), read once into a table of transitions; nothing touches the process'
 * TZ or calls localtime, so any thread may compute at any time. A schedule fires at each UTC
 * second whose wall-clock time in its zone matches, with Vixie cron's rule at daylight-saving
 * changes for schedules with a fixed hour (an hour field not starting with `*`):
 *   - clocks go forward (a gap): a wall time the gap skips fires once, at the first second
 *     after the gap; schedules whose hour field starts with `*` just have no such times;
 *   - clocks go back (an overlap): a wall time shown twice fires at its first showing only;
 *     schedules whose hour field starts with `*` fire at both.
 * After the last transition in the file (2037 in Debian's "fat" tzdata) the last offset
 * holds.
 */
#ifndef BINDUQ_CRON_H
#define BINDUQ_CRON_H

#include "../binduq.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bq_cron {
    uint64_t sec, min;  /* bit i: second / minute i matches */
    uint32_t hour;      /* bits 0..23 */
    uint32_t dom;       /* bits 1..31 */
    uint16_t mon;       /* bits 1..12 */
    uint8_t dow;        /* bits 0..6, Sunday = 0 */
    bool dom_star;      /* the day-of-month field starts with '*' (Vixie's AND rule) */
    bool dow_star;      /* the day-of-week field starts with '*' */
    bool hour_star;     /* the hour field starts with '*' (the daylight-saving rule above) */
};

/* Parses expr into *out. BQ_EINVAL with a message naming the field and the problem. */
bq_status bq_cron_parse(const char *expr, struct bq_cron *out, bq_err *err);

/* A time zone: UTC offsets and the UTC seconds they start at. */
struct bq_tz {
    char name[64];
    size_t n;          /* transitions */
    int64_t *at;       /* owned: n UTC seconds, ascending */
    int32_t *off;      /* owned: n offsets (seconds east of UTC) from at[i] on */
    int32_t off0;      /* the offset before the first transition (all time when n is 0) */
};

/* Loads the zone `name` ("Europe/Berlin"; NULL, "" or "UTC": UTC without a file) from
 * `dir` (NULL: /usr/share/zoneinfo). BQ_EINVAL for a malformed name or file, BQ_ENOTFOUND
 * for an unknown zone (the message names the tzdata package), BQ_ENOMEM. *out is freed with
 * bq_tz_free on success only. */
bq_status bq_tz_load(const char *name, const char *dir, struct bq_tz *out, bq_err *err);
void bq_tz_free(struct bq_tz *tz);

/* The UTC offset in seconds of `tz` at UTC second t. */
int32_t bq_tz_offset(const struct bq_tz *tz, int64_t t);

/* The first UTC second after `after` at which c fires in tz (NULL: UTC), as described above.
 * False when it never fires within about ten years (a 31st of February), and when `after`
 * or the tick falls outside the years 0 to 9999. */
bool bq_cron_next(const struct bq_cron *c, const struct bq_tz *tz, int64_t after, int64_t *next);

#endif
