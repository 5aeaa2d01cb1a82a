#ifndef CMODBUS_SHIM_H
#define CMODBUS_SHIM_H
#include <errno.h>
#include <modbus.h>   /* found through pkg-config's -I/usr/include/modbus */

/* Swift does not import the EMBX* / EMB* error macros (they are expressions over enum
   constants): expose them as inline functions. */
static inline int cmodbus_embbadcrc(void) { return EMBBADCRC; }
static inline int cmodbus_embbaddata(void) { return EMBBADDATA; }
static inline int cmodbus_embbadexc(void) { return EMBBADEXC; }
static inline int cmodbus_embmdata(void) { return EMBMDATA; }
static inline int cmodbus_embbadslave(void) { return EMBBADSLAVE; }
static inline int cmodbus_errno(void) { return errno; }

#endif
