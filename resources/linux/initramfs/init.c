// SPDX-License-Identifier: Apache-2.0
/*
 * /init of the tiny Linux guest's initramfs.
 *
 * Built with `gcc -static -Os` by build-initramfs.sh. On PVM hosts every
 * kernel entry costs about a millisecond (a page fault 4.5-16 ms), so this
 * program makes few system calls: one write(2) per console line, no stdio.
 *
 * It mounts /dev (devtmpfs), /proc, /sys and the cgroup2 hierarchy at
 * /sys/fs/cgroup, prints "init: userspace up", starts the guest agent if
 * the initramfs has one, then does what the kernel command line asks
 * (options start with "init.", see README.md in this directory), and
 * finally ends the VM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT "/bin/guest-agent"
#define HOG "/bin/hog"
#define HOG_CGROUP "/sys/fs/cgroup/hog"
#define DEBUG_EXIT_PORT 0xf4

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n = snprintf(buf, sizeof(buf), "init: ");

	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	(void)!write(1, buf, n);
}

static long ms_since_boot(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads a small file into buf (NUL-terminated, trailing newline cut). */
static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	if (n > 0 && buf[n - 1] == '\n')
		buf[n - 1] = 0;
	return 0;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0) {
		say("cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	n = write(fd, text, strlen(text));
	close(fd);
	if (n < 0) {
		say("cannot write '%s' to %s: %s", text, path, strerror(errno));
		return -1;
	}
	return 0;
}

/* "16M", "2048K", "1G", "4096": bytes; 0 when malformed. */
static unsigned long parse_size(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);

	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	}
	return (*end == 0 || *end == ' ') ? v : 0;
}

/* The orders from /proc/cmdline. */
struct orders {
	int hold;		/* init.hold: stay up after the work */
	int exit_code;		/* init.exit=N: end with N on port 0xf4, -1: reboot */
	int devices;		/* init.devices: print how devices were bound */
	int agent_off;		/* init.agent=off: do not start the agent */
	unsigned long touch;	/* init.touch=SIZE: touch SIZE, then free it */
	char oom_hog[32];	/* init.oom_hog=SIZE: run the hog */
	char memcg_max[32];	/* init.memcg_max=SIZE: the hog's memory.max */
	char cat[128];		/* init.cat=PATH: print the file */
	char write[128];	/* init.write=PATH: write a line to it, fsync */
};

static void copy_word(char *dst, size_t len, const char *src)
{
	size_t i = 0;

	while (src[i] && src[i] != ' ' && i + 1 < len) {
		dst[i] = src[i];
		i++;
	}
	dst[i] = 0;
}

static void parse_orders(const char *cmdline, struct orders *o)
{
	const char *p = cmdline;

	memset(o, 0, sizeof(*o));
	o->exit_code = -1;
	while ((p = strstr(p, "init."))) {
		if (p != cmdline && p[-1] != ' ') {
			p++;
			continue;
		}
		p += 5;
		if (!strncmp(p, "hold", 4) && (p[4] == ' ' || !p[4]))
			o->hold = 1;
		else if (!strncmp(p, "devices", 7) && (p[7] == ' ' || !p[7]))
			o->devices = 1;
		else if (!strncmp(p, "agent=off", 9))
			o->agent_off = 1;
		else if (!strncmp(p, "exit=", 5))
			o->exit_code = atoi(p + 5) & 0xff;
		else if (!strncmp(p, "touch=", 6))
			o->touch = parse_size(p + 6);
		else if (!strncmp(p, "oom_hog=", 8))
			copy_word(o->oom_hog, sizeof(o->oom_hog), p + 8);
		else if (!strncmp(p, "memcg_max=", 10))
			copy_word(o->memcg_max, sizeof(o->memcg_max), p + 10);
		else if (!strncmp(p, "cat=", 4))
			copy_word(o->cat, sizeof(o->cat), p + 4);
		else if (!strncmp(p, "write=", 6))
			copy_word(o->write, sizeof(o->write), p + 6);
		else
			say("unknown order 'init.%.*s'", (int)strcspn(p, " "), p);
	}
}

static void mount_or_say(const char *src, const char *dst, const char *type)
{
	if (mount(src, dst, type, MS_NOSUID | MS_NOEXEC, NULL) && errno != EBUSY)
		say("mount %s on %s: %s", type, dst, strerror(errno));
}

static pid_t spawn(const char *path, char *const argv[], const char *cgroup)
{
	static char *const envp[] = { "PATH=/bin", NULL };
	pid_t pid = fork();

	if (pid == 0) {
		if (cgroup && write_file(cgroup, "0"))
			_exit(126);
		execve(path, argv, envp);
		say("exec %s: %s", path, strerror(errno));
		_exit(127);
	}
	if (pid < 0)
		say("fork for %s: %s", path, strerror(errno));
	return pid;
}

/* Prints what the kernel bound to our devices, from sysfs. */
static void report_devices(void)
{
	static const char *const links[][2] = {
		/* COM1: a PNP device from the DSDT ("00:0N"), or serial8250 */
		{ "ttyS0", "/sys/class/tty/ttyS0/device" },
		{ "virtio0", "/sys/bus/virtio/devices/virtio0" },
		{ "virtio0 driver", "/sys/bus/virtio/devices/virtio0/driver" },
		{ "virtio1", "/sys/bus/virtio/devices/virtio1" },
		{ "virtio1 driver", "/sys/bus/virtio/devices/virtio1/driver" },
	};
	char target[256], id[64];

	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		ssize_t n = readlink(links[i][1], target, sizeof(target) - 1);

		if (n < 0)
			continue;
		target[n] = 0;
		say("device %s -> %s", links[i][0], target);
	}
	if (!read_file("/sys/class/tty/ttyS0/device/id", id, sizeof(id)))
		say("device ttyS0 pnp id %s", id);
	if (!read_file("/sys/bus/virtio/devices/virtio0/device", id, sizeof(id)))
		say("device virtio0 virtio id %s", id);
}

/* mmap with MAP_POPULATE: the kernel zeroes SIZE in one system call
 * (a page fault per 4 KiB would cost ~10 ms each here), then frees it. */
static void touch_and_free(unsigned long size)
{
	long t0 = ms_since_boot();
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED) {
		say("touch: mmap %lu MiB: %s", size >> 20, strerror(errno));
		return;
	}
	munmap(p, size);
	say("touched and freed %lu MiB in %ld ms", size >> 20, ms_since_boot() - t0);
}

static void run_hog(const struct orders *o)
{
	char *argv[] = { "hog", (char *)o->oom_hog, NULL };
	const char *procs = NULL;
	char events[256];
	int status;
	long t0;
	pid_t pid;

	if (o->memcg_max[0]) {
		if (mkdir(HOG_CGROUP, 0755) && errno != EEXIST) {
			say("mkdir " HOG_CGROUP ": %s", strerror(errno));
			return;
		}
		if (write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory") ||
		    write_file(HOG_CGROUP "/memory.max", o->memcg_max))
			return;
		procs = HOG_CGROUP "/cgroup.procs";
	}
	t0 = ms_since_boot();
	pid = spawn(HOG, argv, procs);
	if (pid < 0)
		return;
	say("hog pid %d touches %s%s%s", pid, o->oom_hog,
	    procs ? " in memcg hog with memory.max=" : " (no memcg)",
	    procs ? o->memcg_max : "");
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFSIGNALED(status))
		say("hog pid %d killed by signal %d (%s) after %ld ms", pid,
		    WTERMSIG(status), strsignal(WTERMSIG(status)),
		    ms_since_boot() - t0);
	else
		say("hog pid %d exited with status %d after %ld ms", pid,
		    WEXITSTATUS(status), ms_since_boot() - t0);
	if (procs && !read_file(HOG_CGROUP "/memory.events", events, sizeof(events))) {
		for (char *c = events; *c; c++)
			if (*c == '\n')
				*c = ',';
		say("memcg hog memory.events: %s", events);
	}
}

/* Prints a small file, one "init: cat PATH: LINE" per line. */
static void cat_file(const char *path)
{
	char buf[1024];

	if (read_file(path, buf, sizeof(buf))) {
		say("cat %s: %s", path, strerror(errno));
		return;
	}
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		say("cat %s: %s", path, line);
}

/* Creates PATH with one line naming the boot, and makes it durable:
 * fsync(2) the file, then its directory. */
static void write_durably(const char *path)
{
	char line[96], dir[128];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int n = snprintf(line, sizeof(line), "written by the guest %ld ms after boot\n",
			 ms_since_boot());
	char *slash;

	if (fd < 0 || write(fd, line, n) != n || fsync(fd)) {
		say("write %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = 0;
	fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	say("wrote %s and synced it", path);
}

static void end_vm(int exit_code)
{
	sync();
	if (exit_code >= 0) {
		/* The VMM (and QEMU's isa-debug-exit) ends the VM with this byte. */
		if (ioperm(DEBUG_EXIT_PORT, 1, 1) == 0)
			outb(exit_code, DEBUG_EXIT_PORT);
		else
			say("ioperm: %s; rebooting instead", strerror(errno));
	}
	/* With reboot=k on the command line: the i8042 reset, which our VMM
	 * turns into exit status 0. (There is no ACPI S5 to power off with.) */
	reboot(RB_AUTOBOOT);
	say("reboot: %s", strerror(errno));
	for (;;)
		pause();
}

int main(void)
{
	char cmdline[4096];
	struct orders o;

	/* The kernel opened the initramfs's /dev/console as fds 0-2. Should
	 * it have failed, devtmpfs has the node. */
	if ((mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, NULL) == 0 || errno == EBUSY) &&
	    fcntl(1, F_GETFD) < 0) {
		int fd = open("/dev/console", O_RDWR);

		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}
	mount_or_say("proc", "/proc", "proc");
	mount_or_say("sysfs", "/sys", "sysfs");
	mount_or_say("cgroup2", "/sys/fs/cgroup", "cgroup2");
	say("userspace up, %ld ms after boot", ms_since_boot());

	if (read_file("/proc/cmdline", cmdline, sizeof(cmdline)))
		cmdline[0] = 0;
	parse_orders(cmdline, &o);

	if (!o.agent_off && access(AGENT, X_OK) == 0) {
		char *argv[] = { "guest-agent", NULL };
		pid_t pid = spawn(AGENT, argv, NULL);

		if (pid > 0)
			say("started guest agent pid %d", pid);
	}
	if (o.devices)
		report_devices();
	if (o.touch)
		touch_and_free(o.touch);
	if (o.oom_hog[0])
		run_hog(&o);
	if (o.cat[0])
		cat_file(o.cat);
	if (o.write[0])
		write_durably(o.write);

	if (o.hold) {
		say("holding");
		for (;;)
			if (wait(NULL) < 0 && errno == ECHILD)
				pause();
	}
	say("done, %ld ms after boot", ms_since_boot());
	end_vm(o.exit_code);
	return 0;
}
