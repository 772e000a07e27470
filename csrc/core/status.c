/* The version and status queries of the public API (the tables live in
 * csrc/common, which the error records share). */
#include "common/common.h"

unsigned st_version_number(void) { return ST_VERSION_NUMBER; }
const char *st_version_string(void) { return ST_VERSION_STRING; }

const char *st_status_str(st_status status) { return st__status_text(status); }
const char *st_status_name(st_status status) { return st__status_symbol(status); }
