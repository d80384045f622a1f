/*
 * The probe-point test program, built as most software is (-O2, no frame pointers):
 *   probe_work timed SHORT LONG  after a line on stdin: SHORT calls of timed_call sleeping
 *                                1.5 ms, then LONG calls sleeping 12 ms (each well inside its
 *                                log2 bucket: (1.05, 2.1] and (8.39, 16.8] ms)
 *   probe_work usdt N            after a line on stdin: N hits of USDT probe
 *                                emberprof_test:tick, from usdt_loop
 *   probe_work hot N             after a line on stdin: N calls of hot_call in a tight loop
 *   probe_work tp N              after a line on stdin: N getppid(2) calls from tp_caller
 * Each prints "done" when finished, then waits for stdin to close.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/sdt.h>
#include <sys/syscall.h>

static volatile long sink;

static void wait_for_go(void)
{
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		exit(1);
}

static void wait_for_close(void)
{
	char line[16];
	printf("done\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		;
}

__attribute__((noinline)) void timed_call(long us)
{
	struct timespec ts = { .tv_sec = 0, .tv_nsec = us * 1000 };
	while (nanosleep(&ts, &ts) != 0)
		;
	sink++;
}

__attribute__((noinline)) void usdt_loop(long n)
{
	for (long i = 0; i < n; i++) {
		DTRACE_PROBE1(emberprof_test, tick, i);
		sink += i;
	}
}

__attribute__((noinline)) long hot_call(long i)
{
	sink += i;
	return sink;
}

__attribute__((noinline)) void tp_caller(long n)
{
	for (long i = 0; i < n; i++)
		sink += syscall(SYS_getppid);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: probe_work timed SHORT LONG | usdt N | hot N | tp N\n");
		return 2;
	}
	long a = atol(argv[2]);
	/* Sleeps end when asked, not up to 50 us later (the default timer slack). */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	wait_for_go();
	if (strcmp(argv[1], "timed") == 0 && argc > 3) {
		long b = atol(argv[3]);
		for (long i = 0; i < a; i++)
			timed_call(1500);
		for (long i = 0; i < b; i++)
			timed_call(12000);
	} else if (strcmp(argv[1], "usdt") == 0) {
		usdt_loop(a);
	} else if (strcmp(argv[1], "hot") == 0) {
		for (long i = 0; i < a; i++)
			hot_call(i);
	} else if (strcmp(argv[1], "tp") == 0) {
		tp_caller(a);
	} else {
		fprintf(stderr, "unknown mode %s\n", argv[1]);
		return 2;
	}
	wait_for_close();
	return 0;
}
