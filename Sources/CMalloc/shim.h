#ifndef CMALLOC_SHIM_H
#define CMALLOC_SHIM_H
/* glibc headers the Glibc Swift module does not include: malloc.h (malloc_trim) and
   sys/auxv.h (getauxval, to find the executable's program headers as mapped). */
#include <malloc.h>
#include <sys/auxv.h>
#endif
