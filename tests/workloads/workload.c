/*
 * Test workloads with known function names, built by the e2e tests with frame pointers:
 *   workload cpu-split        one thread: 60% burn_heavy, 30% burn_medium, 10% burn_light
 *                             of its CPU time (measured, not estimated from loop counts)
 *   workload recurse DEPTH    burns CPU at the bottom of a DEPTH-deep recursion
 *   workload syscalls         write(2) to /dev/null in a tight loop, from do_writes
 *   workload fixed ROUNDS N   N threads each run ROUNDS rounds of cpu-split's work, then exit
 *   workload busy N           N threads run cpu-split's loop (more threads than CPUs: preemption)
 *   workload burst N MS       after a line on stdin: N new threads spin for MS ms, then all sleep
 *   workload sleep N MS       after a line on stdin: N nanosleeps of MS ms in sleep_in_nanosleep
 *   workload two-sites N A B  after a line on stdin: N rounds of 3 sleeps of A ms in
 *                             block_at_site_a, then 3 of B ms in block_at_site_b: the same
 *                             libc call from two functions of the same shape (same registers
 *                             at the syscall; only the callers on the stack differ)
 *   workload deep-sites N MS  after a line on stdin: N sleeps of MS ms from deep_site_a, then N
 *                             from deep_site_b, through the same four functions
 *   workload pipe-wait N MS   after a line on stdin: N reads in wait_on_pipe, each answered by a
 *                             helper thread MS ms later
 *   workload pingpong PAIRS N  PAIRS pairs of threads pass a byte back and forth over pipes N
 *                             times each (scheduler-heavy: every pass is a wakeup and a switch)
 *   workload direct-io PATH N after a line on stdin: N O_DIRECT 4 KiB writes to PATH, fsync,
 *                             then N O_DIRECT 4 KiB reads of the same blocks
 *   workload writes N THREADS THREADS threads each make N write(2) calls of a byte to
 *                             /dev/null in do_writes_n, then exit (fixed syscall-heavy work)
 *   workload tree-sleep FIRST COUNT US
 *                             forever: for k in FIRST..FIRST+COUNT, walk to a stack that is
 *                             distinct for each k (k < 2^TREE_LEVELS) and sleep US microseconds
 *                             there (many unique off-CPU stacks, at a chosen repeat rate)
 *   workload tree-burn FIRST COUNT US
 *                             the same walk, burning US microseconds of CPU at each leaf
 *                             (many unique on-CPU stacks)
 *   workload unwalkable       burns CPU in burn_unwalkable, whose frame record points at a
 *                             return address no mapping holds (a walk that ends in [unknown])
 *   workload short-many N MS  after a line on stdin: N child processes one after another, each burning MS ms of CPU
 *                             in short_lived_burn and exiting (processes gone by the next drain)
 *   workload exec-loop N MS   burns MS ms of CPU in burn_heavy, then execs itself with N-1,
 *                             until N is 0 (the same PID, a new image every MS ms)
 *   workload jit MS           runs machine code copied into anonymous executable memory (what
 *                             a JIT makes) for MS ms, after printing "jit ADDR SIZE" of it
 *   workload libc-waits N MS  after a line on stdin: N waits of MS ms each through libc's
 *                             nanosleep (wait_in_libc_nanosleep), read on a pipe
 *                             (wait_in_libc_read) and pthread_cond_wait (wait_in_libc_cond)
 *   workload signal MS        for MS ms, spin_until_signalled burns CPU while a 10 ms timer
 *                             signal runs burn_in_signal_handler (about 3 ms each)
 *   workload dlopen LIB MS    burns MS ms, then dlopens LIB (tests/workloads/dlopen_lib.c)
 *                             and calls its eplib_outer from call_dlopened forever
 * Blocking calls are raw syscalls so that our function is the user leaf: Debian's libc has no
 * frame pointers, and a walk starting inside it skips its caller.
 * Every call is followed by more work so that no frame is erased by a tail call.
 */
#define _GNU_SOURCE /* O_DIRECT */
#include <dlfcn.h>
#include <fcntl.h>
#include <time.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIT 400000L /* loop iterations in one unit of work, about a millisecond */

static volatile long sink;
/* Never cleared: loops test it so that GCC does not treat them as noreturn and drop
 * their frame-pointer prologue. */
static volatile int running = 1;

/*
 * cpu-split and busy burn for a given thread CPU time (units of TIME_UNIT_NS), so that the 60/30/10
 * split holds however fast each loop runs on a noisy host; `fixed` burns a fixed number of
 * iterations, so that a profiler's overhead shows in its wall time.
 */
static int by_time;
/*
 * One unit of timed work. Not a divisor of the 99 Hz sampling period: a 10 ms round would
 * run in lockstep with the sampler and alias the split.
 */
#define TIME_UNIT_NS 730000L

static inline __attribute__((always_inline)) long thread_cpu_ns(void)
{
	struct timespec ts;
	long ret;
	/* A raw syscall: a call into libc (no frame pointer) would hide the burning function. */
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"((long)SYS_clock_gettime), "D"((long)CLOCK_THREAD_CPUTIME_ID), "S"(&ts)
			 : "rcx", "r11", "memory");
	(void)ret;
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* The loop every burn function inlines, so that each is the leaf of its own samples. */
#define BURN(units)                                                             \
	do {                                                                    \
		volatile long acc = 0; /* per call: no shared line between threads */ \
		if (by_time) {                                                  \
			long end = thread_cpu_ns() + (units) * TIME_UNIT_NS;    \
			do {                                                    \
				for (volatile long i = 0; i < 20000; i++)       \
					acc += i;                               \
			} while (thread_cpu_ns() < end);                        \
		} else {                                                        \
			for (volatile long i = 0; i < (units) * UNIT; i++)      \
				acc += i;                                       \
		}                                                               \
		sink += acc;                                                    \
	} while (0)

static inline __attribute__((always_inline)) void light_inner(long units)
{
	BURN(units);
}

__attribute__((noinline)) void burn_heavy(long units)
{
	BURN(units);
	sink++;
}

__attribute__((noinline)) void burn_medium(long units)
{
	BURN(units);
	sink++;
}

__attribute__((noinline)) void burn_light(long units)
{
	light_inner(units);
	sink++;
}

/* Burns CPU for `ms` milliseconds of its own CPU time, then returns: a short-lived process. */
__attribute__((noinline)) void short_lived_burn(long ms)
{
	by_time = 1;
	BURN(ms * 1000000L / TIME_UNIT_NS);
	sink++;
}

__attribute__((noinline)) void cpu_split(void)
{
	while (running) {
		burn_heavy(6);
		burn_medium(3);
		burn_light(1);
	}
}

static void *fixed_rounds(void *arg)
{
	long rounds = (long)arg;
	for (long r = 0; r < rounds; r++) {
		burn_heavy(6);
		burn_medium(3);
		burn_light(1);
	}
	return NULL;
}

/* A fixed amount of CPU work on N threads, for timing with and without a profiler. */
static int fixed_work(long rounds, int threads)
{
	pthread_t tids[256];
	if (threads < 1 || threads > 256)
		return 2;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&tids[i], NULL, fixed_rounds, (void *)rounds) != 0)
			return 1;
	for (int i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	return 0;
}

__attribute__((noinline)) void recursion_leaf(void)
{
	volatile long acc = 0;
	for (volatile long i = 0; i < UNIT; i++)
		acc += i;
	sink += acc;
}

__attribute__((noinline)) int recurse(int depth)
{
	volatile char frame[16];
	frame[0] = (char)depth;
	if (depth == 0)
		recursion_leaf();
	else
		recurse(depth - 1);
	return frame[0] + 1;
}

__attribute__((noinline)) void account(long ret)
{
	sink += ret;
}

/* Calls account() so that it is not a leaf: GCC gives a leaf that never touches the stack
 * no frame at all, and the frame-pointer walk would then skip its caller. */
/* A raw syscall, inlined: a call into libc's wrapper (no frame pointer) would hide the
 * calling function, and so would a leaf function of our own. */
static inline __attribute__((always_inline)) long raw_syscall3(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

__attribute__((noinline)) void do_writes(int fd)
{
	static const char byte = 'x';
	while (running)
		account(raw_syscall3(SYS_write, fd, (long)&byte, 1));
}

struct writer {
	int fd;
	long n;
};

/* Bounded twin of do_writes, for timing a fixed number of syscalls. */
__attribute__((noinline)) void do_writes_n(int fd, long n)
{
	static const char byte = 'x';
	for (long i = 0; i < n && running; i++)
		account(raw_syscall3(SYS_write, fd, (long)&byte, 1));
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	do_writes_n(w->fd, w->n);
	return NULL;
}

static int fixed_writes(long n, int threads)
{
	pthread_t tids[256];
	struct writer w;
	if (threads < 1 || threads > 256)
		return 2;
	w.fd = open("/dev/null", O_WRONLY);
	if (w.fd < 0) {
		perror("/dev/null");
		return 1;
	}
	w.n = n;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&tids[i], NULL, writer_main, &w) != 0)
			return 1;
	for (int i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	return close(w.fd);
}

__attribute__((noinline)) void sleep_in_nanosleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	sink += raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
}

__attribute__((noinline)) void wait_on_pipe(int fd)
{
	char byte;
	sink += raw_syscall3(SYS_read, fd, (long)&byte, 1);
}

struct answerer {
	int fd;
	long n, ms;
};

__attribute__((noinline)) void answer_after_delay(struct answerer *a)
{
	struct timespec ts = { a->ms / 1000, (a->ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
	sink += write(a->fd, "x", 1);
}

static void *answerer_main(void *arg)
{
	struct answerer *a = arg;
	for (long i = 0; i < a->n; i++)
		answer_after_delay(a);
	return NULL;
}

/*
 * tree-sleep: stack k is a path of TREE_LEVELS calls, each to tree_left or tree_right as the
 * bits of k say, so every k has its own sequence of return addresses (2^TREE_LEVELS stacks).
 */
#define TREE_LEVELS 14

/* tree-burn: the leaves burn CPU instead of sleeping. */
static int tree_burn;

__attribute__((noinline)) void tree_leaf(long us)
{
	if (tree_burn) {
		volatile long acc = 0;
		long end = thread_cpu_ns() + us * 1000L;
		do {
			for (volatile long i = 0; i < 200; i++)
				acc += i;
		} while (thread_cpu_ns() < end);
		sink += acc;
		return;
	}
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000L };
	sink += raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
}

void tree_left(long k, int level, long us);
void tree_right(long k, int level, long us);

static inline __attribute__((always_inline)) void tree_step(long k, int level, long us)
{
	if (level == 0)
		tree_leaf(us);
	else if ((k >> (level - 1)) & 1)
		tree_right(k, level - 1, us);
	else
		tree_left(k, level - 1, us);
}

__attribute__((noinline)) void tree_left(long k, int level, long us)
{
	tree_step(k, level, us);
	sink++;
}

__attribute__((noinline)) void tree_right(long k, int level, long us)
{
	tree_step(k, level, us);
	sink++;
}

static int tree_sleep(long first, long count, long us)
{
	if (first < 0 || count < 1 || first + count > (1L << TREE_LEVELS) || us < 1)
		return 2;
	/* Default timer slack (50 us) would stretch short sleeps and blur the chosen rate. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	while (running)
		for (long k = first; k < first + count; k++)
			tree_step(k, TREE_LEVELS, us);
	return 0;
}

static void wait_for_go(void)
{
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		exit(3);
}

/* Each O_DIRECT request of one aligned block is one block-layer request at least. */
static int direct_io(const char *path, long n)
{
	enum { BLOCK = 4096 };
	void *buf;
	int fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0600);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	if (posix_memalign(&buf, BLOCK, BLOCK) != 0)
		return 1;
	memset(buf, 'x', BLOCK);
	wait_for_go();
	for (long i = 0; i < n; i++) {
		if (pwrite(fd, buf, BLOCK, i * BLOCK) != BLOCK) {
			perror("O_DIRECT write");
			return 1;
		}
	}
	if (fsync(fd) != 0)
		return 1;
	for (long i = 0; i < n; i++) {
		if (pread(fd, buf, BLOCK, i * BLOCK) != BLOCK) {
			perror("O_DIRECT read");
			return 1;
		}
	}
	free(buf);
	return close(fd);
}

struct pingpong {
	int in, out;
	long n;
	int first;
};

static void *pingpong_main(void *arg)
{
	struct pingpong *p = arg;
	char byte = 'x';
	for (long i = 0; i < p->n; i++) {
		if (p->first && write(p->out, &byte, 1) != 1)
			break;
		if (read(p->in, &byte, 1) != 1)
			break;
		if (!p->first && write(p->out, &byte, 1) != 1)
			break;
	}
	return NULL;
}

static int pingpong(int pairs, long n)
{
	pthread_t tids[2 * 64];
	struct pingpong ends[2 * 64];
	if (pairs < 1 || pairs > 64)
		return 2;
	for (int i = 0; i < pairs; i++) {
		int ab[2], ba[2];
		if (pipe(ab) != 0 || pipe(ba) != 0)
			return 1;
		ends[2 * i] = (struct pingpong){ ba[0], ab[1], n, 1 };
		ends[2 * i + 1] = (struct pingpong){ ab[0], ba[1], n, 0 };
	}
	for (int i = 0; i < 2 * pairs; i++)
		if (pthread_create(&tids[i], NULL, pingpong_main, &ends[i]) != 0)
			return 1;
	for (int i = 0; i < 2 * pairs; i++)
		pthread_join(tids[i], NULL);
	return 0;
}

static void *busy_main(void *arg)
{
	(void)arg;
	cpu_split();
	return NULL;
}

/* burst: threads that spin for a wall-clock time, report, then sleep for good. */
static sem_t burst_done;

static void *burst_main(void *arg)
{
	long ms = (long)arg;
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	long end = t.tv_sec * 1000000000L + t.tv_nsec + ms * 1000000L;
	do {
		for (volatile long i = 0; i < 20000; i++)
			;
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (t.tv_sec * 1000000000L + t.tv_nsec < end);
	sem_post(&burst_done);
	for (;;)
		pause();
	return NULL;
}

/* After "go", N new threads compete for the CPUs for MS ms; then every thread sleeps until
 * killed, so that its scheduler statistics stay readable and stop changing. */
static int burst(int n, long ms)
{
	sem_init(&burst_done, 0, 0);
	wait_for_go();
	pthread_t t;
	for (int i = 0; i < n; i++)
		if (pthread_create(&t, NULL, burst_main, (void *)ms) != 0)
			return 1;
	for (int i = 0; i < n; i++)
		while (sem_wait(&burst_done) != 0)
			;
	for (;;)
		pause();
}

/*
 * Burns CPU with the frame pointer on a fake frame record whose return address is 0x10,
 * inside no mapping: a frame-pointer walk reports that address and ends there, as walks
 * through code built without frame pointers end in garbage.
 */
__attribute__((noinline)) void burn_unwalkable(void)
{
	static unsigned long fake_frame[2] = { 0, 0x10 };
	while (running) {
		long n = 50 * UNIT;
		__asm__ volatile("push %%rbp\n\t"
				 "mov %1, %%rbp\n\t"
				 "1: dec %0\n\t"
				 "jnz 1b\n\t"
				 "pop %%rbp\n\t"
				 : "+r"(n)
				 : "r"(fake_frame)
				 : "memory", "cc");
		sink++;
	}
}

/* N children, one after another, each a process that lives MS ms of CPU time. */
static int short_many(long n, long ms)
{
	wait_for_go();
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			short_lived_burn(ms);
			_exit(0);
		}
		waitpid(pid, NULL, 0);
	}
	return 0;
}

/* Burns `ms` ms in burn_heavy, then runs this program again in place with n - 1. */
static int exec_loop(long n, long ms, char *self)
{
	by_time = 1;
	burn_heavy(ms * 1000000L / TIME_UNIT_NS);
	if (n <= 0)
		return 0;
	char next[32];
	char ms_arg[32];
	snprintf(next, sizeof(next), "%ld", n - 1);
	snprintf(ms_arg, sizeof(ms_arg), "%ld", ms);
	char *args[] = { self, "exec-loop", next, ms_arg, NULL };
	execv("/proc/self/exe", args);
	perror("execv");
	return 1;
}

/* A countdown loop with no frame of its own: the sampled IP is in the anonymous memory. */
static const unsigned char jit_code[] = {
#if defined(__x86_64__)
	0x48, 0xff, 0xcf, /* dec %rdi */
	0x75, 0xfb, /* jnz back to the dec */
	0xc3, /* ret */
#elif defined(__aarch64__)
	0x00, 0x04, 0x00, 0xf1, /* subs x0, x0, #1 */
	0xe1, 0xff, 0xff, 0x54, /* b.ne back to the subs */
	0xc0, 0x03, 0x5f, 0xd6, /* ret */
#else
#define NO_JIT_CODE
	0,
#endif
};

static int jit(long ms)
{
#ifdef NO_JIT_CODE
	fprintf(stderr, "jit: no machine code for this architecture\n");
	return 2;
#endif
	long page = sysconf(_SC_PAGESIZE);
	unsigned char *code = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (code == MAP_FAILED)
		return 1;
	memcpy(code, jit_code, sizeof(jit_code));
	if (mprotect(code, page, PROT_READ | PROT_EXEC) != 0)
		return 1;
	__builtin___clear_cache((char *)code, (char *)code + sizeof(jit_code));
	void (*spin)(long) = (void (*)(long))(void *)code;
	printf("jit %lx %zx\n", (unsigned long)code, sizeof(jit_code));
	fflush(stdout);
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		spin(1000000);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (running && (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
	return 0;
}

/* A comparator libc's qsort calls back: its samples belong under sort_numbers. */
__attribute__((noinline)) static int compare_numbers(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	/* Some work per call, so that most samples land here rather than in qsort. */
	for (int i = 0; i < 20; i++)
		x = x * 2654435761u + i, y = y * 2654435761u + i;
	return (x > y) - (x < y);
}

/* Sorts shuffled numbers with libc's qsort (no frame pointers in Debian's libc). */
__attribute__((noinline)) static void sort_numbers(long ms)
{
	enum { N = 4096 };
	static unsigned numbers[N];
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (unsigned i = 0; i < N; i++)
			numbers[i] = i * 2654435761u;
		qsort(numbers, N, sizeof(numbers[0]), compare_numbers);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (running && (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
}

/* Reads the clock in a loop: most of the time is in the vdso's __vdso_clock_gettime. */
__attribute__((noinline)) static void read_clock_in_vdso(long ms)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (running && (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
}

/*
 * libc-waits: the waits of `sleep` and `pipe-wait`, and a condition variable's, through
 * libc's wrappers (nanosleep, read, pthread_cond_wait), which have no frame pointers here.
 */
__attribute__((noinline)) void wait_in_libc_nanosleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
	sink++;
}

__attribute__((noinline)) void wait_in_libc_read(int fd)
{
	char byte;
	sink += read(fd, &byte, 1);
}

static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_ready = PTHREAD_COND_INITIALIZER;
static long cond_given, cond_taken;

__attribute__((noinline)) void wait_in_libc_cond(void)
{
	pthread_mutex_lock(&cond_lock);
	while (cond_given == cond_taken)
		pthread_cond_wait(&cond_ready, &cond_lock);
	cond_taken++;
	pthread_mutex_unlock(&cond_lock);
	sink++;
}

/* Signals the condition n times, ms apart. */
static void *cond_answerer(void *arg)
{
	struct answerer *a = arg;
	for (long i = 0; i < a->n; i++) {
		struct timespec ts = { a->ms / 1000, (a->ms % 1000) * 1000000L };
		raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
		pthread_mutex_lock(&cond_lock);
		cond_given++;
		pthread_cond_signal(&cond_ready);
		pthread_mutex_unlock(&cond_lock);
	}
	return NULL;
}

static int libc_waits(long n, long ms)
{
	int fds[2];
	pthread_t helper;
	struct answerer a = { 0, n, ms };
	if (pipe(fds) != 0)
		return 1;
	a.fd = fds[1];
	wait_for_go();
	for (long i = 0; i < n; i++)
		wait_in_libc_nanosleep(ms);
	pthread_create(&helper, NULL, answerer_main, &a);
	for (long i = 0; i < n; i++)
		wait_in_libc_read(fds[0]);
	pthread_join(helper, NULL);
	pthread_create(&helper, NULL, cond_answerer, &a);
	for (long i = 0; i < n; i++)
		wait_in_libc_cond();
	pthread_join(helper, NULL);
	return 0;
}

/*
 * two-sites: both functions are the same code, so the thread enters the kernel with the
 * same registers, the same syscall and the same arguments from either; only the return
 * address into them (and up) tells them apart.
 */
/* noipa: GCC folds identical functions at -O2 (-fipa-icf), and these must stay two. */
__attribute__((noipa)) void block_at_site_a(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
	sink++;
}

__attribute__((noipa)) void block_at_site_b(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
	sink++;
}

/* Read at run time, so that the loops stay loops: unrolled, each call would be a call
 * site of its own, with its own return address. */
static volatile int site_repeats = 3;

static int two_sites(long n, long a_ms, long b_ms)
{
	wait_for_go();
	for (long i = 0; i < n; i++) {
		for (int k = 0; k < site_repeats; k++)
			block_at_site_a(a_ms);
		for (int k = 0; k < site_repeats; k++)
			block_at_site_b(b_ms);
	}
	return 0;
}

/*
 * deep-sites: the same chain of four functions down to nanosleep from two callers, so the
 * thread blocks with the same registers and the same first four callers either way; only
 * the sixth frame up (deep_site_a or deep_site_b) differs.
 */
__attribute__((noipa)) void deep_chain_4(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
	sink++;
}

__attribute__((noipa)) void deep_chain_3(long ms)
{
	deep_chain_4(ms);
	sink++;
}

__attribute__((noipa)) void deep_chain_2(long ms)
{
	deep_chain_3(ms);
	sink++;
}

__attribute__((noipa)) void deep_chain_1(long ms)
{
	deep_chain_2(ms);
	sink++;
}

__attribute__((noipa)) void deep_site_a(long ms)
{
	deep_chain_1(ms);
	sink++;
}

__attribute__((noipa)) void deep_site_b(long ms)
{
	deep_chain_1(ms);
	sink++;
}

static int deep_sites(long n, long ms)
{
	wait_for_go();
	for (long i = 0; i < n; i++)
		deep_site_a(ms);
	for (long i = 0; i < n; i++)
		deep_site_b(ms);
	return 0;
}

/* signal MS: a timer signal every 10 ms, whose handler burns about 3 ms of CPU. */
static volatile sig_atomic_t signals;

__attribute__((noinline)) void burn_in_signal_handler(int sig)
{
	(void)sig;
	BURN(3);
	signals++;
}

/* What the signals interrupt: burns until MS ms worth of signals came. */
__attribute__((noinline)) void spin_until_signalled(long ms)
{
	while (running && signals < ms / 10)
		BURN(1);
	sink++;
}

static int signal_burn(long ms)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = burn_in_signal_handler;
	sa.sa_flags = SA_RESTART;
	struct itimerval every = { { 0, 10000 }, { 0, 10000 } };
	if (sigaction(SIGALRM, &sa, NULL) != 0 || setitimer(ITIMER_REAL, &every, NULL) != 0) {
		perror("signal timer");
		return 1;
	}
	spin_until_signalled(ms);
	return 0;
}

/* Burns CPU for ms milliseconds of wall time. */
__attribute__((noinline)) static void burn_before_dlopen(long ms)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (long i = 0; i < UNIT; i++)
			sink += i;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (running && (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
}

/*
 * Loads a library after start and burns CPU in it: its unwind table must reach the kernel
 * although it was not mapped when the profiler listed the process. The wait burns CPU, so
 * that the process is sampled (and announced, its mappings captured) before the dlopen.
 */
__attribute__((noinline)) static int call_dlopened(const char *path, long ms)
{
	burn_before_dlopen(ms);
	void *lib = dlopen(path, RTLD_NOW);
	long (*outer)(long) = lib ? (long (*)(long))dlsym(lib, "eplib_outer") : NULL;
	if (!outer) {
		fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
		return 1;
	}
	while (running)
		sink += outer(100);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s cpu-split | recurse DEPTH | syscalls | fixed ROUNDS THREADS | busy N | burst N MS | sleep N MS | pipe-wait N MS | pingpong PAIRS N | direct-io PATH N | short MS | writes N THREADS | tree-sleep FIRST COUNT US | tree-burn FIRST COUNT US | unwalkable | short-many N MS | exec-loop N MS | jit MS | vdso MS | qsort MS | libc-waits N MS | two-sites N A B | deep-sites N MS | signal MS | dlopen LIB MS\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "cpu-split") == 0) {
		by_time = 1;
		cpu_split();
	} else if (strcmp(argv[1], "recurse") == 0 && argc > 2) {
		int depth = atoi(argv[2]);
		while (running)
			recurse(depth);
	} else if (strcmp(argv[1], "fixed") == 0 && argc > 3) {
		return fixed_work(atol(argv[2]), atoi(argv[3]));
	} else if (strcmp(argv[1], "burst") == 0 && argc > 3) {
		return burst(atoi(argv[2]), atol(argv[3]));
	} else if (strcmp(argv[1], "busy") == 0 && argc > 2) {
		int n = atoi(argv[2]);
		by_time = 1;
		pthread_t t;
		for (int i = 1; i < n; i++)
			pthread_create(&t, NULL, busy_main, NULL);
		cpu_split();
	} else if (strcmp(argv[1], "sleep") == 0 && argc > 3) {
		long n = atol(argv[2]), ms = atol(argv[3]);
		wait_for_go();
		for (long i = 0; i < n; i++)
			sleep_in_nanosleep(ms);
		return 0;
	} else if (strcmp(argv[1], "pipe-wait") == 0 && argc > 3) {
		int fds[2];
		pthread_t helper;
		struct answerer a = { 0, atol(argv[2]), atol(argv[3]) };
		if (pipe(fds) != 0)
			return 1;
		a.fd = fds[1];
		wait_for_go();
		pthread_create(&helper, NULL, answerer_main, &a);
		for (long i = 0; i < a.n; i++)
			wait_on_pipe(fds[0]);
		pthread_join(helper, NULL);
		return 0;
	} else if (strcmp(argv[1], "pingpong") == 0 && argc > 3) {
		return pingpong(atoi(argv[2]), atol(argv[3]));
	} else if (strcmp(argv[1], "direct-io") == 0 && argc > 3) {
		return direct_io(argv[2], atol(argv[3]));
	} else if (strcmp(argv[1], "writes") == 0 && argc > 3) {
		return fixed_writes(atol(argv[2]), atoi(argv[3]));
	} else if (strcmp(argv[1], "tree-burn") == 0 && argc > 4) {
		tree_burn = 1;
		return tree_sleep(atol(argv[2]), atol(argv[3]), atol(argv[4]));
	} else if (strcmp(argv[1], "tree-sleep") == 0 && argc > 4) {
		return tree_sleep(atol(argv[2]), atol(argv[3]), atol(argv[4]));
	} else if (strcmp(argv[1], "unwalkable") == 0) {
		burn_unwalkable();
		return 0;
	} else if (strcmp(argv[1], "short-many") == 0 && argc > 3) {
		return short_many(atol(argv[2]), atol(argv[3]));
	} else if (strcmp(argv[1], "exec-loop") == 0 && argc > 3) {
		return exec_loop(atol(argv[2]), atol(argv[3]), argv[0]);
	} else if (strcmp(argv[1], "short") == 0 && argc > 2) {
		short_lived_burn(atol(argv[2]));
		return 0;
	} else if (strcmp(argv[1], "jit") == 0 && argc > 2) {
		return jit(atol(argv[2]));
	} else if (strcmp(argv[1], "qsort") == 0 && argc > 2) {
		sort_numbers(atol(argv[2]));
		return 0;
	} else if (strcmp(argv[1], "dlopen") == 0 && argc > 3) {
		return call_dlopened(argv[2], atol(argv[3]));
	} else if (strcmp(argv[1], "vdso") == 0 && argc > 2) {
		read_clock_in_vdso(atol(argv[2]));
		return 0;
	} else if (strcmp(argv[1], "deep-sites") == 0 && argc > 3) {
		return deep_sites(atol(argv[2]), atol(argv[3]));
	} else if (strcmp(argv[1], "two-sites") == 0 && argc > 4) {
		return two_sites(atol(argv[2]), atol(argv[3]), atol(argv[4]));
	} else if (strcmp(argv[1], "libc-waits") == 0 && argc > 3) {
		return libc_waits(atol(argv[2]), atol(argv[3]));
	} else if (strcmp(argv[1], "signal") == 0 && argc > 2) {
		return signal_burn(atol(argv[2]));
	} else if (strcmp(argv[1], "syscalls") == 0) {
		int fd = open("/dev/null", O_WRONLY);
		if (fd < 0) {
			perror("/dev/null");
			return 1;
		}
		do_writes(fd);
	}
	fprintf(stderr, "unknown mode %s\n", argv[1]);
	return 2;
}
