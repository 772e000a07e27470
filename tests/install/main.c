/* Installed-library consumer: writes a file with the writer, reads it back
 * and checks every value. Usage: consumer OUT.safetensors */
#include <safetensors.h>

#include <stdio.h>
#include <string.h>

#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "consumer: %s:%d: check failed: %s\n",     \
              __FILE__, __LINE__, #cond);                        \
      return 1;                                                  \
    }                                                            \
  } while (0)

#define CHECK_ST(call)                                                     \
  do {                                                                     \
    st_status s_ = (call);                                                 \
    if (s_ != ST_OK) {                                                     \
      fprintf(stderr, "consumer: %s:%d: %s -> %s (%s)\n", __FILE__,        \
              __LINE__, #call, st_status_name(s_), err.message);           \
      return 1;                                                            \
    }                                                                      \
  } while (0)

int main(int argc, char **argv) {
  st_error err;
  st_writer *w = NULL;
  st_file *f = NULL;
  const float weights[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 42.0f};
  const int64_t step = 1234567890123LL;
  const uint64_t shape[2] = {2, 3};
  float back[6];
  int64_t step_back = 0;
  size_t index = 0;
  const char *value = NULL;
  size_t value_len = 0;

  if (argc != 2) {
    fprintf(stderr, "usage: consumer OUT.safetensors\n");
    return 2;
  }
  memset(&err, 0, sizeof err);
  err.message = "";
  CHECK(st_version_number() == ST_VERSION_NUMBER);
  CHECK(strcmp(st_version_string(), ST_VERSION_STRING) == 0);

  CHECK_ST(st_writer_new(NULL, &w, &err));
  CHECK_ST(st_writer_add_metadata(w, "format", 6, "pt", 2, &err));
  CHECK_ST(st_writer_add_tensor(w, "layer.weight", 12, ST_F32, shape, 2,
                                weights, sizeof weights, &err));
  CHECK_ST(st_writer_add_tensor(w, "step", 4, ST_I64, NULL, 0, &step,
                                sizeof step, &err));
  CHECK_ST(st_writer_write_path(w, argv[1], 0, &err));
  st_writer_free(w);

  CHECK_ST(st_open(argv[1], NULL, &f, &err));
  CHECK(st_tensor_count(f) == 2);
  CHECK_ST(st_metadata_find(f, "format", 6, &value, &value_len));
  CHECK(value_len == 2 && memcmp(value, "pt", 2) == 0);

  st_tensor_info ti;
  CHECK_ST(st_tensor_find(f, "layer.weight", 12, &index));
  CHECK_ST(st_tensor_get(f, index, &ti));
  CHECK(ti.dtype == ST_F32 && ti.rank == 2 && ti.shape[0] == 2 &&
        ti.shape[1] == 3 && ti.numel == 6);
  CHECK_ST(st_tensor_read(f, index, back, sizeof back, &err));
  CHECK(memcmp(back, weights, sizeof weights) == 0);

  CHECK_ST(st_tensor_find(f, "step", 4, &index));
  CHECK_ST(st_tensor_get(f, index, &ti));
  CHECK(ti.dtype == ST_I64 && ti.rank == 0 && ti.numel == 1);
  CHECK_ST(st_tensor_read(f, index, &step_back, sizeof step_back, &err));
  CHECK(step_back == step);
  st_close(f);

  printf("consumer: OK (safetensors %s)\n", st_version_string());
  return 0;
}
