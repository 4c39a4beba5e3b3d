/*
 * vmmove test guest: the only program in the initramfs, run by the kernel as /init (PID 1).
 *
 * Parameters come from the kernel command line: options the kernel does not know ("key=value"
 * without a dot) are handed to init as environment variables.
 *
 *   wss_mib=N        working set in MiB (default 0: no memory activity at all)
 *   dirty_mib_s=N    rate at which the working set is rewritten, MiB/s (default 0: idle guest,
 *                    the working set is only read back and verified, once per heartbeat interval,
 *                    a slice every 10 ms so no single turn of the loop takes long)
 *   hb_ms=N          heartbeat interval in ms (default 1000)
 *
 * Every page of the working set holds a pattern: each 64-bit word is (generation << 32 | page index).
 * When the guest visits a page it first checks that the page still holds exactly what it wrote on
 * the previous pass, then writes the next generation. A page that does not match is a "bad" page:
 * after a live migration this means the destination got a stale or corrupt copy of guest memory.
 *
 * Output on the console (serial ttyS0), one line per write(2), lines are stable and easy to parse:
 *
 *   VMMOVE-GUEST START wss_mib=128 dirty_mib_s=64 hb_ms=1000
 *   VMMOVE-GUEST READY fill_ms=412
 *   HB seq=1 bad=0 written_mib=160 checked_mib=32 passes=1 last_mib=32 wss_mib=128 dirty_mib_s=64 t_ms=1000
 *   BAD page=123 word=0 want=000000050000007b got=000000040000007b  (at most 8 such lines per heartbeat)
 *
 * "HB " lines: space-separated key=value pairs of decimal integers.
 *   seq          heartbeat number, 1, 2, 3... (restarts at 1 only if the guest rebooted)
 *   bad          cumulative number of pages found not holding their expected pattern (must stay 0);
 *                a bad page is repaired when found, so each corruption is counted once
 *   written_mib  cumulative MiB written (initial fill included)
 *   checked_mib  cumulative MiB verified
 *   passes       completed passes over the whole working set (after the initial fill)
 *   last_mib     MiB written since the previous heartbeat (the dirty rate actually achieved)
 *   t_ms         guest monotonic time since init started
 *   gap_ms       longest stall of the main loop since the previous heartbeat, by the guest's clock
 *                (throttling, post-copy page faults); 0 below 2 work slices
 *   max_gap_ms   the same, since READY
 *
 *   tick_ms=N        (default 0: off) also print a short line every N ms of guest time:
 *   T seq=7 w=40960 g=12
 *                    w = pages written so far (initial fill included), g = longest loop stall in ms
 *                    since the previous tick, by the guest's clock. The testbed timestamps these lines
 *                    as they arrive: the guest's own clock stops while QEMU pauses the VM (the virtual
 *                    clock does not run during stop-and-copy), so only an outside clock sees that
 *                    pause, as a user of the guest would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / sizeof(uint64_t))
#define TICK_NS 10000000L /* 10 ms work slices */

static void out(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(1, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return (*end == '\0' && x >= 0) ? x : dflt;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t *mem;     /* working set */
static uint32_t *gen;     /* generation last written to each page */
static uint64_t npages;
static uint64_t bad, bad_reported, pages_written, pages_checked;

static inline uint64_t pattern(uint64_t page, uint32_t g)
{
    return ((uint64_t)g << 32) | (page & 0xffffffffu);
}

/* Returns 1 if the page holds generation gen[page]. */
static int check_page(uint64_t page)
{
    const uint64_t *p = mem + page * WORDS;
    const uint64_t want = pattern(page, gen[page]);
    uint64_t diff = 0;
    for (unsigned i = 0; i < WORDS; i++)
        diff |= p[i] ^ want;
    pages_checked++;
    if (diff == 0)
        return 1;
    bad++;
    if (bad_reported < 8) {
        bad_reported++;
        for (unsigned i = 0; i < WORDS; i++)
            if (p[i] != want) {
                out("BAD page=%llu word=%u want=%016llx got=%016llx\n", (unsigned long long)page, i,
                    (unsigned long long)want, (unsigned long long)p[i]);
                break;
            }
    }
    /* Repair it, so that one bad page is counted once (matters for the idle, verify-only mode). */
    uint64_t *w = mem + page * WORDS;
    for (unsigned i = 0; i < WORDS; i++)
        w[i] = want;
    return 0;
}

static void write_page(uint64_t page)
{
    uint64_t *p = mem + page * WORDS;
    const uint64_t v = pattern(page, ++gen[page]);
    for (unsigned i = 0; i < WORDS; i++)
        p[i] = v;
    pages_written++;
}

/* A stall in ms: a loop turn longer than twice its normal length, else 0 (scheduling noise). */
static uint64_t stall_ms(uint64_t turn_ns, uint64_t normal_ns)
{
    return turn_ns > 2 * normal_ns ? turn_ns / 1000000 : 0;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

int main(void)
{
    const long wss_mib = env_long("wss_mib", 0);
    const long dirty_mib_s = env_long("dirty_mib_s", 0);
    long hb_ms = env_long("hb_ms", 1000);
    if (hb_ms < 10)
        hb_ms = 10;
    long tick_ms = env_long("tick_ms", 0);
    if (tick_ms && tick_ms < 5)
        tick_ms = 5;

    out("VMMOVE-GUEST START wss_mib=%ld dirty_mib_s=%ld hb_ms=%ld\n", wss_mib, dirty_mib_s, hb_ms);
    const uint64_t t0 = now_ns();

    npages = (uint64_t)wss_mib * (1024 * 1024 / PAGE);
    if (npages) {
        mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        gen = calloc(npages, sizeof *gen);
        if (mem == MAP_FAILED || !gen) {
            out("VMMOVE-GUEST ERROR cannot allocate wss_mib=%ld: %s\n", wss_mib, strerror(errno));
            npages = 0;
        } else {
            for (uint64_t pg = 0; pg < npages; pg++)
                write_page(pg); /* generation 1 everywhere */
        }
    }
    out("VMMOVE-GUEST READY fill_ms=%llu\n", (unsigned long long)((now_ns() - t0) / 1000000));

    const uint64_t pages_per_s = (uint64_t)dirty_mib_s * (1024 * 1024 / PAGE);
    const uint64_t hb_ns = (uint64_t)hb_ms * 1000000ull;
    /* The loop's normal turn: a work slice, or (idle) the next heartbeat or tick. */
    uint64_t sleep_ns = npages ? (uint64_t)TICK_NS : hb_ns;
    if (tick_ms && (uint64_t)tick_ms * 1000000ull < sleep_ns)
        sleep_ns = (uint64_t)tick_ms * 1000000ull;
    uint64_t seq = 0, passes = 0, cursor = 0, last_written = pages_written;
    uint64_t window_start = now_ns(), window_done = 0; /* dirty-rate accounting */
    uint64_t next_hb = window_start + hb_ns;
    const uint64_t tick_ns = (uint64_t)tick_ms * 1000000ull;
    uint64_t next_tick = tick_ns ? window_start + tick_ns : UINT64_MAX, tick_seq = 0;
    uint64_t prev_loop = window_start, gap_hb = 0, gap_tick = 0, gap_max = 0;

    for (;;) {
        uint64_t t = now_ns();
        /* A stall: time between two loop turns beyond what the loop itself asked to sleep. */
        if (t - prev_loop > gap_hb)
            gap_hb = t - prev_loop;
        if (t - prev_loop > gap_tick)
            gap_tick = t - prev_loop;
        if (t - prev_loop > gap_max)
            gap_max = t - prev_loop;
        prev_loop = t;
        if (npages && pages_per_s) {
            uint64_t target = (uint64_t)((double)(t - window_start) * (double)pages_per_s / 1e9);
            /* After a long stall (e.g. the VM was paused) don't try to catch up with a burst. */
            if (target > window_done + pages_per_s / 5) {
                window_start = t;
                window_done = 0;
                target = 0;
            }
            while (window_done < target) {
                check_page(cursor);
                write_page(cursor);
                window_done++;
                if (++cursor == npages) {
                    cursor = 0;
                    passes++;
                }
            }
        }
        if (npages && !pages_per_s) { /* idle: verify only (reads do not dirty memory) */
            uint64_t slice = npages * (uint64_t)TICK_NS / hb_ns + 1;
            for (uint64_t i = 0; i < slice; i++) {
                check_page(cursor);
                if (++cursor == npages) {
                    cursor = 0;
                    passes++;
                }
            }
        }
        t = now_ns();
        if (t >= next_tick) {
            out("T seq=%llu w=%llu g=%llu\n", (unsigned long long)++tick_seq,
                (unsigned long long)pages_written, (unsigned long long)(gap_tick / 1000000));
            gap_tick = 0;
            next_tick += tick_ns;
            if (next_tick <= t)
                next_tick = t + tick_ns;
        }
        if (t >= next_hb) {
            seq++;
            const uint64_t mib_pages = 1024 * 1024 / PAGE;
            out("HB seq=%llu bad=%llu written_mib=%llu checked_mib=%llu passes=%llu last_mib=%llu "
                "wss_mib=%ld dirty_mib_s=%ld t_ms=%llu gap_ms=%llu max_gap_ms=%llu\n",
                (unsigned long long)seq, (unsigned long long)bad,
                (unsigned long long)(pages_written / mib_pages), (unsigned long long)(pages_checked / mib_pages),
                (unsigned long long)passes, (unsigned long long)((pages_written - last_written) / mib_pages),
                wss_mib, dirty_mib_s, (unsigned long long)((t - t0) / 1000000),
                (unsigned long long)stall_ms(gap_hb, sleep_ns), (unsigned long long)stall_ms(gap_max, sleep_ns));
            gap_hb = 0;
            last_written = pages_written;
            bad_reported = 0;
            next_hb += hb_ns;
            if (next_hb <= t) /* paused for longer than an interval: resync */
                next_hb = t + hb_ns;
        }
        uint64_t wake = now_ns() + TICK_NS;
        if (!npages)
            wake = next_hb;
        if (wake > next_hb)
            wake = next_hb;
        if (wake > next_tick)
            wake = next_tick;
        sleep_until(wake);
    }
}
