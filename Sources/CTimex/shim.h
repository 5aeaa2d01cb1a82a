#ifndef CTIMEX_SHIM_H
#define CTIMEX_SHIM_H
/* glibc's sys/timex.h (adjtimex, TIME_ERROR: the kernel's NTP state), which the Glibc Swift
   module does not include. */
#include <sys/timex.h>
#endif
