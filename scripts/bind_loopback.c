/* LD_PRELOAD shim: rewrite bind(0.0.0.0 | ::) to the loopback address.
 *
 * Orthanc 1.10 has no bind-address option: both its HTTP and DICOM listeners bind every
 * interface. Tests must only ever listen on loopback, so they start Orthanc with
 *   gcc -shared -fPIC -O2 -o bind_loopback.so scripts/bind_loopback.c -ldl
 *   LD_PRELOAD=./bind_loopback.so Orthanc config.json
 * Each rewrite is reported on stderr, so a test log shows where the server listens.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *address, socklen_t length) {
    static bind_function real_bind = NULL;
    if (real_bind == NULL) real_bind = (bind_function)dlsym(RTLD_NEXT, "bind");
    if (address != NULL && address->sa_family == AF_INET && length >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in loopback;
        memcpy(&loopback, address, sizeof loopback);
        if (loopback.sin_addr.s_addr == htonl(INADDR_ANY)) {
            loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            fprintf(stderr, "[bind-loopback] fd %d: 0.0.0.0:%d -> 127.0.0.1\n", fd, ntohs(loopback.sin_port));
            return real_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
        }
    }
    if (address != NULL && address->sa_family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 loopback;
        memcpy(&loopback, address, sizeof loopback);
        if (memcmp(&loopback.sin6_addr, &in6addr_any, sizeof in6addr_any) == 0) {
            loopback.sin6_addr = in6addr_loopback;
            fprintf(stderr, "[bind-loopback] fd %d: [::]:%d -> [::1]\n", fd, ntohs(loopback.sin6_port));
            return real_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
        }
    }
    return real_bind(fd, address, length);
}
