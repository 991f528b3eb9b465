/* A stand-in for nginx's master process in critest's images: PID file, a process title that
 * reads "nginx: master process ...", and busybox httpd as its one worker serving DOCROOT on
 * PORT (both from the environment). Forwards SIGTERM/SIGINT/SIGQUIT to the worker, reaps
 * every child (it may be PID 1) and exits with the worker. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TITLE "nginx: master process nginx -g daemon off;"

static volatile pid_t worker;

static void forward(int sig)
{
	if (worker > 0)
		kill(worker, sig);
}

int main(int argc, char **argv)
{
	const char *port = getenv("PORT");
	const char *root = getenv("DOCROOT");
	char *wargv[] = {"busybox", "httpd", "-f", "-p", NULL, "-h", NULL, NULL};
	FILE *f;
	pid_t pid;
	int status = 0;

	if (argc < 1 || strcmp(argv[0], TITLE) != 0) {
		/* Re-exec under the title: /proc/PID/cmdline then shows it. */
		char *targv[] = {TITLE, NULL};
		execv("/usr/sbin/nginx", targv);
		perror("nginx: re-exec");
		return 1;
	}
	wargv[4] = (char *)(port ? port : "80");
	wargv[6] = (char *)(root ? root : "/usr/share/nginx/html");
	f = fopen("/var/run/nginx.pid", "w");
	if (f) {
		fprintf(f, "%d\n", (int)getpid());
		fclose(f);
	}
	signal(SIGTERM, forward);
	signal(SIGINT, forward);
	signal(SIGQUIT, forward);
	pid = fork();
	if (pid < 0) {
		perror("nginx: fork");
		return 1;
	}
	if (pid == 0) {
		execv("/bin/busybox", wargv);
		perror("nginx: exec busybox httpd");
		_exit(127);
	}
	worker = pid;
	fprintf(stderr, "nginx: master %d, worker %d listening on :%s\n", (int)getpid(),
		(int)pid, wargv[4]);
	for (;;) {
		pid_t p = wait(&status);
		if (p < 0 && errno == EINTR)
			continue;
		if (p < 0 || p == pid)
			break;
	}
	unlink("/var/run/nginx.pid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
