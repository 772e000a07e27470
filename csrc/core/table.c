/* The read-only queries of an open handle: sizes, the tensor table, the
 * metadata, zero-copy pointers. Pure lookups in what the header parser
 * built; a handle never changes after open, so all are safe from many
 * threads. */
#include <string.h>

#include "file.h"
#include "internal.h"

#define HDR 8u

st_backend st_file_backend(const st_file *f) { return f != NULL ? f->backend : ST_BACKEND_MMAP; }
uint64_t st_header_size(const st_file *f) { return f != NULL ? f->header_size : 0; }
uint64_t st_data_offset(const st_file *f) { return f != NULL ? HDR + f->header_size : 0; }
uint64_t st_data_size(const st_file *f) { return f != NULL ? f->data_size : 0; }

const char *st_header_bytes(const st_file *f) {
  if (f == NULL) return NULL;
  if (f->header_buf != NULL) return (const char *)f->header_buf;
  return (const char *)f->base + HDR;
}

size_t st_tensor_count(const st_file *f) { return f != NULL ? f->ntensors : 0; }

st_status st_tensor_get(const st_file *f, size_t index, st_tensor_info *out) {
  if (f == NULL || out == NULL || index >= f->ntensors) return ST_ERR_INVALID_ARGUMENT;
  const st__tensor *t = &f->tensors[index];
  memset(out, 0, sizeof *out);
  out->name = t->name;
  out->name_len = t->name_len;
  out->dtype = t->dtype;
  out->rank = t->rank;
  out->shape = t->shape;
  out->numel = t->numel;
  out->data_begin = t->begin;
  out->data_end = t->end;
  return ST_OK;
}

st_status st_tensor_name_order(const st_file *f, size_t k, size_t *index) {
  if (f == NULL || index == NULL || k >= f->ntensors) return ST_ERR_INVALID_ARGUMENT;
  *index = f->name_order[k];
  return ST_OK;
}

/* Binary search over the name order: O(log n) and immune to hash flooding. */
st_status st_tensor_find(const st_file *f, const char *name, size_t len, size_t *index) {
  if (f == NULL || index == NULL || (name == NULL && len > 0)) return ST_ERR_INVALID_ARGUMENT;
  if (name == NULL) name = "";
  size_t lo = 0, hi = f->ntensors;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const st__tensor *t = &f->tensors[f->name_order[mid]];
    int c = st__bytes_cmp(t->name, t->name_len, name, len);
    if (c == 0) {
      *index = f->name_order[mid];
      return ST_OK;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return ST_ERR_NOT_FOUND;
}

size_t st_metadata_count(const st_file *f) { return f != NULL ? f->nmeta : 0; }

st_status st_metadata_get(const st_file *f, size_t k, const char **key, size_t *key_len,
                          const char **value, size_t *value_len) {
  if (f == NULL || k >= f->nmeta) return ST_ERR_INVALID_ARGUMENT;
  const st__meta *m = &f->meta[k];
  if (key != NULL) *key = m->key;
  if (key_len != NULL) *key_len = m->key_len;
  if (value != NULL) *value = m->value;
  if (value_len != NULL) *value_len = m->value_len;
  return ST_OK;
}

st_status st_metadata_find(const st_file *f, const char *key, size_t key_len, const char **value,
                           size_t *value_len) {
  if (f == NULL || (key == NULL && key_len > 0)) return ST_ERR_INVALID_ARGUMENT;
  if (key == NULL) key = "";
  size_t lo = 0, hi = f->nmeta;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const st__meta *m = &f->meta[mid];
    int c = st__bytes_cmp(m->key, m->key_len, key, key_len);
    if (c == 0) {
      if (value != NULL) *value = m->value;
      if (value_len != NULL) *value_len = m->value_len;
      return ST_OK;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return ST_ERR_NOT_FOUND;
}

st_status st_tensor_data(const st_file *f, size_t index, const void **data) {
  if (f == NULL || data == NULL || index >= f->ntensors) return ST_ERR_INVALID_ARGUMENT;
  if (f->base == NULL) return ST_ERR_UNSUPPORTED;
  *data = f->base + HDR + f->header_size + f->tensors[index].begin;
  return ST_OK;
}

