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

/* What a file that is not safetensors looks like, from its first n bytes
 * (p may be NULL when n is 0) and its size: a constant message starting
 * "not a safetensors file: ", or NULL when the bytes are nothing we know.
 * Only asked after the framing failed, so a valid file is never named. */
const char *st__sniff(const unsigned char *p, size_t n, uint64_t file_size);

#endif /* ST_CORE_INTERNAL_H */
