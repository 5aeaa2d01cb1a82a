#ifndef CTESTSUPPORT_H
#define CTESTSUPPORT_H

#include <spawn.h>

/// glibc calls that are declared only with _GNU_SOURCE, for the test fixtures.

/// pipe2(fds, O_CLOEXEC): both ends close-on-exec from the start.
int cts_pipe_cloexec(int fds[2]);

/// posix_spawn_file_actions_addclosefrom_np: the child closes every descriptor from `from` up.
int cts_spawn_close_from(posix_spawn_file_actions_t *actions, int from);

#endif
