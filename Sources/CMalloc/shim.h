#ifndef CMALLOC_SHIM_H
#define CMALLOC_SHIM_H
/* glibc's malloc.h (malloc_trim), which the Glibc Swift module does not include. */
#include <malloc.h>
#endif
