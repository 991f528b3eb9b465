/* pause: the infrastructure container's program (critest pulls registry.k8s.io/pause:3.9 and
 * k8s.gcr.io/pause:3.9 as one image from two registries): sleeps until SIGTERM or SIGINT. */
#include <signal.h>
#include <unistd.h>

static void done(int sig)
{
	(void)sig;
	_exit(0);
}

int main(void)
{
	signal(SIGTERM, done);
	signal(SIGINT, done);
	for (;;)
		pause();
}
