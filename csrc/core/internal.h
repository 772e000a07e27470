/* Internal to the safetensors library: not installed, not part of the ABI.
 * Shared helpers of every layer: allocation through the caller's allocator,
 * error records, dtype facts. */
#ifndef ST_CORE_INTERNAL_H
#define ST_CORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* Allocation: a NULL allocator (or NULL function) means libc. */
void *st__malloc(const st_allocator *a, size_t size);
void *st__calloc(const st_allocator *a, size_t n, size_t size); /* checked */
void *st__realloc(const st_allocator *a, void *ptr, size_t size);
void st__free(const st_allocator *a, void *ptr);

/* Fills err (if non-NULL) and returns code. name may be NULL. */
st_status st__fail(st_error *err, st_status code, const char *message,
                   uint64_t offset, const char *name, size_t name_len,
                   int sys_errno);

/* Marks err as success (code ST_OK) when non-NULL. */
void st__ok(st_error *err);

/* Validates UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the
 * index of the first bad byte, or len when the whole text is valid. */
size_t st__utf8_check(const unsigned char *s, size_t len);

/* Bits per element of a valid dtype. */
unsigned st__dtype_bits(st_dtype dtype);

/* The reference writer's rank of a valid dtype (it sorts by rank,
 * descending); not the enum number. */
unsigned st__dtype_rank(st_dtype dtype);

#endif /* ST_CORE_INTERNAL_H */
