/* Internal to the safetensors library: not installed, not part of the ABI.
 * The format layer's internal facts (dtypes), over the helpers every layer
 * shares (csrc/common: allocation, error records, UTF-8). */
#ifndef ST_CORE_INTERNAL_H
#define ST_CORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "safetensors.h"

/* Bits per element of a valid dtype. */
unsigned st__dtype_bits(st_dtype dtype);

/* The reference writer's rank of a valid dtype (it sorts by rank,
 * descending); not the enum number. */
unsigned st__dtype_rank(st_dtype dtype);

#endif /* ST_CORE_INTERNAL_H */
