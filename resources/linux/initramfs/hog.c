// SPDX-License-Identifier: Apache-2.0
/*
 * A memory hog for the tiny Linux guest: `hog SIZE` touches SIZE bytes
 * (K/M/G suffixes) one 4 KiB page at a time, mapping 4 MiB more whenever
 * it needs it, the way a growing process does (so the overcommit heuristic
 * never refuses it up front, and SIZE may exceed the guest's RAM). The
 * kernel's OOM killer (memcg or global) then has a clear victim. It prints
 * one line per 4 MiB so the serial log shows its progress, and
 * "hog: touched all" if it survives.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK (4UL << 20)

static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	(void)!write(1, buf, n);
}

int main(int argc, char **argv)
{
	unsigned long size, page = 4096;
	char *end, *p;

	if (argc != 2) {
		say("usage: hog SIZE[K|M|G]");
		return 2;
	}
	size = strtoul(argv[1], &end, 10);
	switch (*end) {
	case 'k': case 'K': size <<= 10; end++; break;
	case 'm': case 'M': size <<= 20; end++; break;
	case 'g': case 'G': size <<= 30; end++; break;
	}
	if (*end || !size) {
		say("hog: bad size '%s'", argv[1]);
		return 2;
	}
	say("hog: pid %d touching %lu KiB", getpid(), size >> 10);
	for (unsigned long done = 0; done < size; done += CHUNK) {
		unsigned long len = size - done < CHUNK ? size - done : CHUNK;

		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			say("hog: mmap of %lu KiB more failed after %lu KiB", len >> 10, done >> 10);
			return 1;
		}
		for (unsigned long off = 0; off < len; off += page)
			p[off] = 1;
		if (len == CHUNK)
			say("hog: touched %lu MiB", (done + len) >> 20);
	}
	say("hog: touched all %lu KiB", size >> 10);
	return 0;
}
