/*
 * storm-client: one initiator of a login storm, for interop/storm (libiscsi).
 *
 *   storm-client --portal 127.0.0.1:3260 --target IQN --initiator IQN
 *                [--lun 0] [--poll-ms 100] [--deadline-s 120] [--verify-mib 1]
 *
 * 1. Connects and logs in (TCP connect + login, timed: login_ms; a refused login records
 *    its status, class << 8 | detail, parsed from libiscsi's "Status: ...(N)").
 * 2. Polls TEST UNIT READY every poll-ms until GOOD, recording each change of answer with
 *    its time: a CHECK CONDITION as "KEY/ASC/ASCQ" in hex ("02/04/01"), BUSY and TASK SET
 *    FULL as "busy"/"task-set-full". A UNIT ATTENTION (06/xx/xx) is a step, polled again at
 *    once. first_sense is the first answer that was neither GOOD nor a UNIT ATTENTION (null
 *    when the LUN was ready straight away).
 * 3. Writes verify-mib MiB of pseudo-random data at LBA 0 (WRITE 16, block size from READ
 *    CAPACITY 16), reads it back (READ 16) and compares.
 * 4. Prints one JSON line:
 *    {"target":..,"lun":..,"start_epoch":..,"login_ms":..,"login_status":..,
 *     "first_sense":"02/04/01"|null,"senses":[{"t_ms":..,"sense":".."},...],
 *     "ready_ms":..|null,"ready_epoch":..|null,"verify":"ok"|"mismatch"|"error: ..",
 *     "error":null|".."}
 *    Times in ms since the start. Exit 0 only when the login succeeded, the LUN became ready
 *    and the verify passed. The whole run is bounded by deadline-s (SIGALRM prints what was
 *    found so far, with error "deadline", and exits 1).
 *
 * Build: cc -O2 -o storm-client storm-client.c -liscsi (interop/tools/build does it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define MAX_STEPS 64
#define OUT_SIZE 16384

struct step {
	long t_ms;
	char sense[24];
};

/* What has been found so far: printed at the end, or by the deadline's SIGALRM. */
static struct {
	const char *target;
	int lun;
	double start_epoch;
	long login_ms; /* -1: no answer */
	int login_status; /* -1: no login response */
	char first_sense[24];
	struct step steps[MAX_STEPS];
	int nsteps;
	long ready_ms; /* -1: never ready */
	char verify[600];
	char error[512];
} result;

static struct timespec started;
static char out[OUT_SIZE];

static long elapsed_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - started.tv_sec) * 1000 + (now.tv_nsec - started.tv_nsec) / 1000000;
}

/* Appends a JSON string (escaped) or null to out at *len. */
static void put_string(size_t *len, const char *s)
{
	if (s == NULL) {
		*len += snprintf(out + *len, OUT_SIZE - *len, "null");
		return;
	}
	if (*len < OUT_SIZE)
		out[(*len)++] = '"';
	for (; *s && *len + 8 < OUT_SIZE; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			*len += snprintf(out + *len, OUT_SIZE - *len, "\\%c", c);
		else if (c < 0x20)
			*len += snprintf(out + *len, OUT_SIZE - *len, "\\u%04x", c);
		else
			out[(*len)++] = c;
	}
	if (*len < OUT_SIZE)
		out[(*len)++] = '"';
}

static void print_result(void)
{
	size_t len = 0;
	len += snprintf(out + len, OUT_SIZE - len, "{\"target\":");
	put_string(&len, result.target);
	len += snprintf(out + len, OUT_SIZE - len, ",\"lun\":%d,\"start_epoch\":%.6f,\"login_ms\":",
			result.lun, result.start_epoch);
	if (result.login_ms < 0)
		len += snprintf(out + len, OUT_SIZE - len, "null");
	else
		len += snprintf(out + len, OUT_SIZE - len, "%ld", result.login_ms);
	len += snprintf(out + len, OUT_SIZE - len, ",\"login_status\":");
	if (result.login_status < 0)
		len += snprintf(out + len, OUT_SIZE - len, "null");
	else
		len += snprintf(out + len, OUT_SIZE - len, "%d", result.login_status);
	len += snprintf(out + len, OUT_SIZE - len, ",\"first_sense\":");
	put_string(&len, result.first_sense[0] ? result.first_sense : NULL);
	len += snprintf(out + len, OUT_SIZE - len, ",\"senses\":[");
	for (int i = 0; i < result.nsteps; i++) {
		len += snprintf(out + len, OUT_SIZE - len, "%s{\"t_ms\":%ld,\"sense\":", i ? "," : "",
				result.steps[i].t_ms);
		put_string(&len, result.steps[i].sense);
		len += snprintf(out + len, OUT_SIZE - len, "}");
	}
	len += snprintf(out + len, OUT_SIZE - len, "],\"ready_ms\":");
	if (result.ready_ms < 0)
		len += snprintf(out + len, OUT_SIZE - len, "null,\"ready_epoch\":null");
	else
		len += snprintf(out + len, OUT_SIZE - len, "%ld,\"ready_epoch\":%.6f", result.ready_ms,
				result.start_epoch + result.ready_ms / 1000.0);
	len += snprintf(out + len, OUT_SIZE - len, ",\"verify\":");
	put_string(&len, result.verify[0] ? result.verify : NULL);
	len += snprintf(out + len, OUT_SIZE - len, ",\"error\":");
	put_string(&len, result.error[0] ? result.error : NULL);
	len += snprintf(out + len, OUT_SIZE - len, "}\n");
	if (len > OUT_SIZE)
		len = OUT_SIZE;
	ssize_t unused = write(1, out, len);
	(void)unused;
}

static void on_deadline(int sig)
{
	(void)sig;
	if (!result.error[0])
		snprintf(result.error, sizeof(result.error), "deadline");
	print_result();
	_exit(1);
}

static void set_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(result.error, sizeof(result.error), fmt, ap);
	va_end(ap);
}

static void record(const char *answer)
{
	if (result.nsteps > 0 && strcmp(result.steps[result.nsteps - 1].sense, answer) == 0)
		return;
	if (result.nsteps == MAX_STEPS)
		return;
	result.steps[result.nsteps].t_ms = elapsed_ms();
	snprintf(result.steps[result.nsteps].sense, sizeof(result.steps[0].sense), "%s", answer);
	result.nsteps++;
}

static void sense_text(struct scsi_task *task, char *buf, size_t size)
{
	snprintf(buf, size, "%02x/%02x/%02x", (unsigned)task->sense.key,
		 (unsigned)(task->sense.ascq >> 8) & 0xff, (unsigned)task->sense.ascq & 0xff);
}

/* "Failed to log in to target. Status: Target not found(515)" -> 515; -1 if none. */
static int login_status_of(const char *error)
{
	const char *status = error ? strstr(error, "Status: ") : NULL;
	const char *open = status ? strrchr(status, '(') : NULL;
	if (open == NULL)
		return -1;
	return atoi(open + 1);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Seconds left before the deadline, at least 1 (libiscsi's PDU timeout unit). */
static int remaining_s(int deadline_s)
{
	long left = deadline_s - elapsed_ms() / 1000;
	return left < 1 ? 1 : (int)left;
}

/* Runs a media command, retrying while it meets a UNIT ATTENTION (a grown LUN says
 * 06/2A/09 once). Returns the task (GOOD) or NULL with the error set. */
static struct scsi_task *media_command(struct iscsi_context *iscsi, int lun, int write,
				       uint64_t lba, unsigned char *data, uint32_t len,
				       uint32_t block)
{
	for (int attempt = 0; attempt < 8; attempt++) {
		struct scsi_task *task =
		    write ? iscsi_write16_sync(iscsi, lun, lba, data, len, block, 0, 0, 0, 0, 0)
			  : iscsi_read16_sync(iscsi, lun, lba, len, block, 0, 0, 0, 0, 0);
		if (task == NULL) {
			set_error("%s: %s", write ? "WRITE 16" : "READ 16", iscsi_get_error(iscsi));
			return NULL;
		}
		if (task->status == SCSI_STATUS_GOOD)
			return task;
		char sense[24];
		sense_text(task, sense, sizeof(sense));
		int unit_attention = task->status == SCSI_STATUS_CHECK_CONDITION &&
				     task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
		if (!unit_attention) {
			set_error("%s: status 0x%02x sense %s", write ? "WRITE 16" : "READ 16",
				  task->status, sense);
			scsi_free_scsi_task(task);
			return NULL;
		}
		scsi_free_scsi_task(task);
	}
	set_error("%s: unit attention after unit attention", write ? "WRITE 16" : "READ 16");
	return NULL;
}

/* xorshift64*: the data written, from a seed that differs per run and target. */
static uint64_t next_random(uint64_t *state)
{
	*state ^= *state >> 12;
	*state ^= *state << 25;
	*state ^= *state >> 27;
	return *state * 2685821657736338717ULL;
}

static void verify(struct iscsi_context *iscsi, int lun, int mib)
{
	struct scsi_task *task = NULL;
	for (int attempt = 0; attempt < 8 && task == NULL; attempt++) {
		task = iscsi_readcapacity16_sync(iscsi, lun);
		if (task == NULL) {
			snprintf(result.verify, sizeof(result.verify), "error: READ CAPACITY 16: %s",
				 iscsi_get_error(iscsi));
			return;
		}
		if (task->status != SCSI_STATUS_GOOD) {
			int unit_attention = task->status == SCSI_STATUS_CHECK_CONDITION &&
					     task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
			char sense[24];
			sense_text(task, sense, sizeof(sense));
			scsi_free_scsi_task(task);
			task = NULL;
			if (!unit_attention) {
				snprintf(result.verify, sizeof(result.verify),
					 "error: READ CAPACITY 16: sense %s", sense);
				return;
			}
		}
	}
	if (task == NULL) {
		snprintf(result.verify, sizeof(result.verify), "error: READ CAPACITY 16: unit attentions");
		return;
	}
	struct scsi_readcapacity16 *capacity = scsi_datain_unmarshall(task);
	if (capacity == NULL || capacity->block_length == 0) {
		snprintf(result.verify, sizeof(result.verify), "error: READ CAPACITY 16 unreadable");
		scsi_free_scsi_task(task);
		return;
	}
	uint32_t block = capacity->block_length;
	uint64_t blocks = capacity->returned_lba + 1;
	scsi_free_scsi_task(task);

	uint32_t len = (uint32_t)mib << 20;
	if (len % block != 0 || len / block > blocks) {
		snprintf(result.verify, sizeof(result.verify),
			 "error: %d MiB does not fit %llu blocks of %u bytes", mib,
			 (unsigned long long)blocks, block);
		return;
	}
	unsigned char *data = malloc(len);
	if (data == NULL) {
		snprintf(result.verify, sizeof(result.verify), "error: out of memory");
		return;
	}
	uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
	for (const char *p = result.target; *p; p++)
		seed = seed * 1099511628211ULL ^ (unsigned char)*p;
	if (seed == 0)
		seed = 1;
	for (uint32_t i = 0; i < len; i += 8) {
		uint64_t r = next_random(&seed);
		memcpy(data + i, &r, 8);
	}
	task = media_command(iscsi, lun, 1, 0, data, len, block);
	if (task == NULL) {
		snprintf(result.verify, sizeof(result.verify), "error: %s", result.error);
		result.error[0] = '\0';
		free(data);
		return;
	}
	scsi_free_scsi_task(task);
	task = media_command(iscsi, lun, 0, 0, NULL, len, block);
	if (task == NULL) {
		snprintf(result.verify, sizeof(result.verify), "error: %s", result.error);
		result.error[0] = '\0';
		free(data);
		return;
	}
	if ((uint32_t)task->datain.size != len || memcmp(task->datain.data, data, len) != 0)
		snprintf(result.verify, sizeof(result.verify), "mismatch");
	else
		snprintf(result.verify, sizeof(result.verify), "ok");
	scsi_free_scsi_task(task);
	free(data);
}

static void usage(void)
{
	fprintf(stderr, "usage: storm-client --portal HOST:PORT --target IQN --initiator IQN "
			"[--lun N] [--poll-ms 100] [--deadline-s 120] [--verify-mib 1]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *portal = NULL, *initiator = NULL;
	long poll_ms = 100;
	int deadline_s = 120, verify_mib = 1;

	result.target = NULL;
	for (int i = 1; i < argc; i++) {
		const char *value = i + 1 < argc ? argv[i + 1] : NULL;
		if (value == NULL)
			usage();
		if (!strcmp(argv[i], "--portal"))
			portal = value;
		else if (!strcmp(argv[i], "--target"))
			result.target = value;
		else if (!strcmp(argv[i], "--initiator"))
			initiator = value;
		else if (!strcmp(argv[i], "--lun"))
			result.lun = atoi(value);
		else if (!strcmp(argv[i], "--poll-ms"))
			poll_ms = atol(value);
		else if (!strcmp(argv[i], "--deadline-s"))
			deadline_s = atoi(value);
		else if (!strcmp(argv[i], "--verify-mib"))
			verify_mib = atoi(value);
		else
			usage();
		i++;
	}
	if (portal == NULL || result.target == NULL || initiator == NULL || poll_ms < 1 ||
	    deadline_s < 1 || verify_mib < 1 || verify_mib > 1024)
		usage();

	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	clock_gettime(CLOCK_MONOTONIC, &started);
	result.start_epoch = wall.tv_sec + wall.tv_nsec / 1e9;
	result.login_ms = -1;
	result.login_status = -1;
	result.ready_ms = -1;
	signal(SIGALRM, on_deadline);
	alarm(deadline_s);

	struct iscsi_context *iscsi = iscsi_create_context(initiator);
	if (iscsi == NULL) {
		set_error("cannot create a libiscsi context");
		print_result();
		return 1;
	}
	iscsi_set_targetname(iscsi, result.target);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	iscsi_set_timeout(iscsi, remaining_s(deadline_s));

	int ok = 0;
	if (iscsi_connect_sync(iscsi, portal) != 0) {
		set_error("connect: %s", iscsi_get_error(iscsi));
		goto done;
	}
	if (iscsi_login_sync(iscsi) != 0) {
		result.login_ms = elapsed_ms();
		result.login_status = login_status_of(iscsi_get_error(iscsi));
		if (result.login_status < 0)
			result.login_ms = -1; /* no login response at all */
		set_error("login: %s", iscsi_get_error(iscsi));
		goto done;
	}
	result.login_ms = elapsed_ms();
	result.login_status = 0;

	for (;;) {
		iscsi_set_timeout(iscsi, remaining_s(deadline_s));
		struct scsi_task *task = iscsi_testunitready_sync(iscsi, result.lun);
		if (task == NULL) {
			set_error("TEST UNIT READY: %s", iscsi_get_error(iscsi));
			goto done;
		}
		int status = task->status;
		char answer[24] = "";
		int unit_attention = 0;
		if (status == SCSI_STATUS_GOOD) {
			scsi_free_scsi_task(task);
			record("good");
			result.ready_ms = elapsed_ms();
			break;
		} else if (status == SCSI_STATUS_CHECK_CONDITION) {
			sense_text(task, answer, sizeof(answer));
			unit_attention = task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
		} else if (status == SCSI_STATUS_BUSY) {
			snprintf(answer, sizeof(answer), "busy");
		} else if (status == SCSI_STATUS_TASK_SET_FULL) {
			snprintf(answer, sizeof(answer), "task-set-full");
		} else {
			snprintf(answer, sizeof(answer), "status-0x%02x", status);
		}
		scsi_free_scsi_task(task);
		record(answer);
		if (!unit_attention && !result.first_sense[0])
			snprintf(result.first_sense, sizeof(result.first_sense), "%s", answer);
		if (!unit_attention)
			sleep_ms(poll_ms);
	}

	iscsi_set_timeout(iscsi, remaining_s(deadline_s));
	verify(iscsi, result.lun, verify_mib);
	ok = strcmp(result.verify, "ok") == 0;
	iscsi_logout_sync(iscsi);

done:
	alarm(0);
	iscsi_destroy_context(iscsi);
	print_result();
	return ok ? 0 : 1;
}
