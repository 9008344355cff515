// Only the sd-daemon prototypes Tollgate calls, declared here instead of
// including <systemd/sd-daemon.h>: that header pulls <sys/socket.h> into this
// module textually, and in whole-module release builds glibc's socket
// constants (SOCK_STREAM, …) then belong to CSystemd and vanish from every
// file that does not import it. The prototypes match libsystemd 252.
#ifndef TOLLGATE_CSYSTEMD_SHIM_H
#define TOLLGATE_CSYSTEMD_SHIM_H

#include <stdint.h>
#include <sys/types.h>

#define TOLLGATE_SD_LISTEN_FDS_START 3

int sd_notify(int unset_environment, const char *state);
int sd_pid_notify(pid_t pid, int unset_environment, const char *state);
int sd_booted(void);
int sd_watchdog_enabled(int unset_environment, uint64_t *usec);
int sd_listen_fds(int unset_environment);
int sd_listen_fds_with_names(int unset_environment, char ***names);
int sd_is_socket(int fd, int family, int type, int listening);

// sd-journal: structured entries, one "FIELD=value" per iovec.
struct iovec;
int sd_journal_sendv(const struct iovec *iov, int n);

#endif
