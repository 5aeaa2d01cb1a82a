#ifndef CMODBUS_SHIM_H
#define CMODBUS_SHIM_H
#include <errno.h>
#include <modbus.h>   /* found through pkg-config's -I/usr/include/modbus */

/* Swift does not import the EMBX* / EMB* error macros (they are expressions over enum
   constants): expose them as inline functions. */
static inline int cmodbus_embxilfun(void) { return EMBXILFUN; }
static inline int cmodbus_embxiladd(void) { return EMBXILADD; }
static inline int cmodbus_embxilval(void) { return EMBXILVAL; }
static inline int cmodbus_embxsfail(void) { return EMBXSFAIL; }
static inline int cmodbus_embxack(void) { return EMBXACK; }
static inline int cmodbus_embxsbusy(void) { return EMBXSBUSY; }
static inline int cmodbus_embxnack(void) { return EMBXNACK; }
static inline int cmodbus_embxmempar(void) { return EMBXMEMPAR; }
static inline int cmodbus_embxgpath(void) { return EMBXGPATH; }
static inline int cmodbus_embxgtar(void) { return EMBXGTAR; }
static inline int cmodbus_embbadcrc(void) { return EMBBADCRC; }
static inline int cmodbus_embbaddata(void) { return EMBBADDATA; }
static inline int cmodbus_embbadexc(void) { return EMBBADEXC; }
static inline int cmodbus_embmdata(void) { return EMBMDATA; }
static inline int cmodbus_embbadslave(void) { return EMBBADSLAVE; }
static inline int cmodbus_errno(void) { return errno; }
static inline void cmodbus_set_errno(int e) { errno = e; }

#endif
