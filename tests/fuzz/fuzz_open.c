/* Fuzz target: open from memory. The input is a whole file. Checks that every
 * verdict is a named status, and that an accepted file's table honours the
 * format contract (tiling, sorted orders, lookups, exact string lengths). */
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_table(const st_file *f, const uint8_t *data, size_t size) {
  size_t n = st_tensor_count(f);
  uint64_t hs = st_header_size(f);
  FZ_CHECK(st_data_offset(f) == 8 + hs);
  FZ_CHECK(8 + hs + st_data_size(f) <= size);
  FZ_CHECK(memcmp(st_header_bytes(f), data + 8, (size_t)hs) == 0);
  uint64_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    st_tensor_info t;
    FZ_CHECK(st_tensor_get(f, i, &t) == ST_OK);
    FZ_CHECK(t.name != NULL && t.name[t.name_len] == '\0');
    FZ_CHECK(memchr(t.name, '\0', t.name_len) == NULL);
    FZ_CHECK((unsigned)t.dtype < ST_DTYPE_COUNT);
    FZ_CHECK(t.rank <= ST_DEFAULT_MAX_RANK);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < t.rank; d++) numel *= t.shape[d];
    FZ_CHECK(numel == t.numel);
    /* The tiling: file order is by begin, with no hole and no overlap. */
    FZ_CHECK(t.data_begin == pos && t.data_end >= t.data_begin);
    pos = t.data_end;
    FZ_CHECK(t.data_end - t.data_begin == numel * st_dtype_bits(t.dtype) / 8);
    size_t found = (size_t)-1;
    FZ_CHECK(st_tensor_find(f, t.name, t.name_len, &found) == ST_OK);
    FZ_CHECK(found == i);
    const void *p = NULL;
    FZ_CHECK(st_tensor_data(f, i, &p) == ST_OK);
    if (t.data_end > t.data_begin)
      FZ_CHECK((const uint8_t *)p == data + 8 + hs + t.data_begin);
  }
  FZ_CHECK(pos == st_data_size(f));
  FZ_CHECK(st_tensor_get(f, n, NULL) == ST_ERR_INVALID_ARGUMENT);
  for (size_t k = 0; k + 1 < n; k++) {
    size_t a, b;
    st_tensor_info ta, tb;
    FZ_CHECK(st_tensor_name_order(f, k, &a) == ST_OK);
    FZ_CHECK(st_tensor_name_order(f, k + 1, &b) == ST_OK);
    FZ_CHECK(st_tensor_get(f, a, &ta) == ST_OK && st_tensor_get(f, b, &tb) == ST_OK);
    size_t m = ta.name_len < tb.name_len ? ta.name_len : tb.name_len;
    int c = memcmp(ta.name, tb.name, m);
    FZ_CHECK(c < 0 || (c == 0 && ta.name_len < tb.name_len));
  }
  size_t nm = st_metadata_count(f);
  for (size_t k = 0; k < nm; k++) {
    const char *key, *val, *v2;
    size_t kl, vl, vl2;
    FZ_CHECK(st_metadata_get(f, k, &key, &kl, &val, &vl) == ST_OK);
    FZ_CHECK(key[kl] == '\0' && val[vl] == '\0');
    FZ_CHECK(memchr(key, '\0', kl) == NULL && memchr(val, '\0', vl) == NULL);
    FZ_CHECK(st_metadata_find(f, key, kl, &v2, &vl2) == ST_OK);
    FZ_CHECK(v2 == val && vl2 == vl);
  }
  FZ_CHECK(st_metadata_get(f, nm, NULL, NULL, NULL, NULL) == ST_ERR_INVALID_ARGUMENT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_file *f = NULL;
  st_error err;
  memset(&err, 0xA5, sizeof err);
  st_status s = st_open_memory(data, size, NULL, &f, &err);
  FZ_CHECK(FZ_KNOWN_STATUS(s));
  FZ_CHECK(err.code == s);
  FZ_CHECK(err.message != NULL);
  if (s != ST_OK) {
    FZ_CHECK(f == NULL);
    FZ_CHECK(s != ST_ERR_NOMEM && s != ST_ERR_IO && s != ST_ERR_INVALID_ARGUMENT);
    /* An offset points into the file, except the expected end of a data
     * section that the file is too short to hold. */
    FZ_CHECK(err.offset == ST_NO_OFFSET || err.offset <= size ||
             s == ST_ERR_INCOMPLETE_BUFFER);
    FZ_CHECK(err.name[ST_ERROR_NAME_CAP - 1] == '\0' || err.name_len == 0);
  } else {
    FZ_CHECK(f != NULL);
    check_table(f, data, size);
  }

  /* The same bytes under other options: trailing bytes allowed, and
   * limits lowered from the input's hash. Neither may change a verdict
   * other than through the option it names. */
  st_open_options o;
  st_open_options_init(&o);
  o.flags = ST_OPEN_ALLOW_TRAILING_BYTES;
  st_file *g = NULL;
  st_status s2 = st_open_memory(data, size, &o, &g, NULL);
  FZ_CHECK(FZ_KNOWN_STATUS(s2));
  if (s == ST_OK) FZ_CHECK(s2 == ST_OK);
  if (s2 == ST_OK && s != ST_OK) FZ_CHECK(s == ST_ERR_INCOMPLETE_BUFFER);
  if (g != NULL) check_table(g, data, size);
  st_close(g);

  uint64_t h = fz_hash(data, size);
  st_open_options_init(&o);
  o.max_rank = (uint32_t)(h & 7);
  o.max_depth = (uint32_t)((h >> 3) & 7);
  o.max_tensors = (h >> 6) & 15;
  o.max_name_len = (h >> 10) & 31;
  o.max_header_size = (h >> 15) & 0xFFF;
  g = NULL;
  s2 = st_open_memory(data, size, &o, &g, NULL);
  FZ_CHECK(FZ_KNOWN_STATUS(s2));
  if (s2 == ST_OK) FZ_CHECK(s == ST_OK);
  if (s == ST_OK && s2 != ST_OK)
    FZ_CHECK(s2 == ST_ERR_LIMIT || s2 == ST_ERR_HEADER_TOO_LARGE);
  st_close(g);
  st_close(f);
  return 0;
}
