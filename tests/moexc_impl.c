/* The one translation unit that holds the implementation for the test and
   tool binaries (they link against build/moexc.o). */
#define MOEXC_IMPLEMENTATION
#include "../moexc.h"
