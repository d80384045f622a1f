/*
 * A library the workload's `dlopen` mode loads after it has run a while, built like most
 * shared libraries (-O2 -fPIC, no frame pointers): only its .eh_frame can walk it, and its
 * table reaches the kernel only once the process is listed again.
 */
static volatile long lib_sink;

/* Burns about `units` thousand iterations: the leaf of the mode's samples. */
__attribute__((noinline)) static long eplib_inner(long units)
{
	long acc = 0;
	for (long i = 0; i < units * 1000; i++)
		acc += i ^ (acc >> 3);
	lib_sink = acc;
	return acc;
}

/* The exported entry: calls the burning function and works after it, so that the call is
 * no tail call. */
__attribute__((noinline)) long eplib_outer(long units)
{
	long r = eplib_inner(units);
	lib_sink += r & 1;
	return r;
}
