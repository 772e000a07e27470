/* Values of 2^32 and more (N, offsets, dims, lengths) are never truncated:
 * each case is built so that a silent truncation to 32 bits would turn a bad
 * file into a good one. Meaningful on every build, decisive on a 32-bit one
 * (make test-m32). Plain C, no test framework: prints each failure and exits
 * non-zero. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

static int failures;

#define EXPECT_EQ(a, b)                                                          \
  do {                                                                           \
    long long a_ = (long long)(a), b_ = (long long)(b);                          \
    if (a_ != b_) {                                                              \
      fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,       \
              __LINE__, #a, a_, #b, b_);                                         \
      failures++;                                                                \
    }                                                                            \
  } while (0)

static size_t frame(unsigned char *out, uint64_t n, const char *header,
                    const char *data, size_t data_len) {
  for (int i = 0; i < 8; i++) out[i] = (unsigned char)(n >> (8 * i));
  size_t h = strlen(header);
  memcpy(out + 8, header, h);
  memcpy(out + 8 + h, data, data_len);
  return 8 + h + data_len;
}

static st_status verdict(const unsigned char *b, size_t len) {
  st_file *f = NULL;
  st_status s = st_open_memory(b, len, NULL, &f, NULL);
  st_close(f);
  return s;
}

static int zeros(void *ctx, uint64_t offset, void *dst, size_t len) {
  (void)ctx;
  (void)offset;
  memset(dst, 0, len);
  return 0;
}

static const uint64_t P32 = (uint64_t)1 << 32;

int main(void) {
  static unsigned char buf[4096];
  const char *ok = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  size_t hl = strlen(ok);

  /* N = 2^32 + the real length: truncated, it would be the valid header. */
  size_t len = frame(buf, P32 + hl, ok, "x", 1);
  EXPECT_EQ(verdict(buf, len), ST_ERR_HEADER_TOO_LARGE);
  {
    /* With the cap lifted, the same N still points past the end. */
    st_open_options o;
    st_open_options_init(&o);
    o.flags = ST_OPEN_ALLOW_HUGE_HEADER;
    o.max_header_size = UINT64_MAX;
    st_file *f = NULL;
    EXPECT_EQ(st_open_memory(buf, len, &o, &f, NULL), ST_ERR_INVALID_HEADER_LENGTH);
    st_close(f);
  }
  len = frame(buf, ((uint64_t)1 << 63) + hl, ok, "x", 1);
  EXPECT_EQ(verdict(buf, len), ST_ERR_HEADER_TOO_LARGE);
  len = frame(buf, hl, ok, "x", 1);
  EXPECT_EQ(verdict(buf, len), ST_OK);

  /* Offsets and dims of 2^32 + 1: truncated, both would read as 1. */
  char h[512];
  snprintf(h, sizeof h,
           "{\"t\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,%llu]}}",
           (unsigned long long)(P32 + 1), (unsigned long long)(P32 + 1));
  len = frame(buf, strlen(h), h, "x", 1);
  EXPECT_EQ(verdict(buf, len), ST_ERR_INCOMPLETE_BUFFER);
  snprintf(h, sizeof h,
           "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%llu,%llu]}}",
           (unsigned long long)P32, (unsigned long long)(P32 + 1));
  len = frame(buf, strlen(h), h, "x", 1);
  EXPECT_EQ(verdict(buf, len), ST_ERR_INVALID_OFFSET);
  snprintf(h, sizeof h,
           "{\"t\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,1]}}",
           (unsigned long long)(P32 + 1));
  len = frame(buf, strlen(h), h, "x", 1);
  EXPECT_EQ(verdict(buf, len), ST_ERR_INVALID_TENSOR_INFO);
  /* Dims whose product is 2^64 wraps to 0 in 64 bits (a zero-size lie). */
  snprintf(h, sizeof h,
           "{\"t\":{\"dtype\":\"U8\",\"shape\":[%llu,%llu],\"data_offsets\":[0,0]}}",
           (unsigned long long)P32, (unsigned long long)P32);
  len = frame(buf, strlen(h), h, "", 0);
  EXPECT_EQ(verdict(buf, len), ST_ERR_VALIDATION_OVERFLOW);
  /* A legal zero-size tensor with a 2^40 dimension keeps the full value. */
  snprintf(h, sizeof h,
           "{\"t\":{\"dtype\":\"F32\",\"shape\":[%llu,0],\"data_offsets\":[0,0]}}",
           (unsigned long long)((uint64_t)1 << 40));
  len = frame(buf, strlen(h), h, "", 0);
  st_file *f = NULL;
  EXPECT_EQ(st_open_memory(buf, len, NULL, &f, NULL), ST_OK);
  if (f != NULL) {
    st_tensor_info ti;
    EXPECT_EQ(st_tensor_get(f, 0, &ti), ST_OK);
    EXPECT_EQ(ti.shape[0] == ((uint64_t)1 << 40), 1);
    EXPECT_EQ(ti.numel, 0);
    unsigned char one;
    EXPECT_EQ(st_read_range(f, P32, 1, &one, NULL), ST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(st_read_range(f, 0, P32, &one, NULL), ST_ERR_INVALID_ARGUMENT);
    st_range r[2] = {{(int64_t)P32 - 1, (int64_t)P32 + 1, 1}, {0, ST_SLICE_END, 1}};
    uint64_t shape[2], nbytes = 7;
    EXPECT_EQ(st_slice_shape(f, 0, r, 2, shape, &nbytes), ST_OK);
    EXPECT_EQ(shape[0], 2);
    EXPECT_EQ(nbytes, 0);
    st_close(f);
  }

  /* Writer: a length of 2^32 + 1 for a 1-element tensor is refused, and a
   * file of more than 4 GiB never "fits" a buffer by truncation. */
  st_writer *w = NULL;
  EXPECT_EQ(st_writer_new(NULL, &w, NULL), ST_OK);
  uint64_t shape1[1] = {1};
  EXPECT_EQ(st_writer_add_tensor(w, "t", 1, ST_U8, shape1, 1, "x", P32 + 1, NULL),
            ST_ERR_INVALID_TENSOR_INFO);
  uint64_t big[1] = {P32 + 16};
  EXPECT_EQ(st_writer_add_tensor_cb(w, "big", 3, ST_U8, big, 1, zeros, NULL, NULL), ST_OK);
  uint64_t total = 0;
  EXPECT_EQ(st_writer_size(w, &total, NULL), ST_OK);
  EXPECT_EQ(total > P32 + 16, 1);
  size_t written = 0;
  EXPECT_EQ(st_writer_write_memory(w, buf, sizeof buf, &written, NULL), ST_ERR_BUFFER_TOO_SMALL);
  st_writer_free(w);

  if (failures != 0) {
    fprintf(stderr, "wide_values: %d failure(s) (sizeof(size_t) = %zu)\n", failures,
            sizeof(size_t));
    return 1;
  }
  printf("wide_values: all cases pass (sizeof(size_t) = %zu)\n", sizeof(size_t));
  return 0;
}
