#ifndef CLINUX_SHIM_H
#define CLINUX_SHIM_H
/* glibc headers the Glibc Swift module does not include: sys/timex.h (adjtimex, TIME_ERROR: the
   kernel's NTP state) and malloc.h (malloc_trim, once after start-up). */
#include <sys/timex.h>
#include <malloc.h>
#endif
