/* The `safetensors` command: verb dispatch, help and version. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: safetensors <command> [options] [args]\n"
    "\n"
    "Commands:\n"
    "  inspect FILE|INDEX.json [--json]  tensors, metadata and totals of a file\n"
    "                                    or of a sharded checkpoint's shards\n"
    "  verify FILE|INDEX.json...         full validation (of an index: of\n"
    "                                    every shard and the weight_map);\n"
    "                                    exit 0 valid, 1 invalid, 2 usage\n"
    "                                    or I/O error\n"
    "  help [COMMAND]                    this text, or a command's\n"
    "\n"
    "Options:\n"
    "  -h, --help     this text (after a command: the command's help)\n"
    "  --version      the library version\n";

typedef int (*verb_fn)(int argc, char **argv);

static verb_fn find_verb(const char *name) {
  if (strcmp(name, "inspect") == 0) return st__cli_inspect;
  if (strcmp(name, "verify") == 0) return st__cli_verify;
  return NULL;
}

/* stdout may be a full disk: say so instead of exiting 0. A closed pipe
 * (`| head -1`) is the reader's choice: end quietly with the verdict. */
static int finish(int rc) {
  if (fflush(stdout) != 0 || ferror(stdout)) {
    if (errno == EPIPE) return rc;
    fprintf(stderr, "safetensors: writing output failed: %s\n",
            strerror(errno));
    return ST_CLI_ERROR;
  }
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return ST_CLI_ERROR;
  }
  const char *a = argv[1];
  if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
    fputs(usage, stdout);
    return finish(ST_CLI_OK);
  }
  if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
    printf("safetensors %s\n", st_version_string());
    return finish(ST_CLI_OK);
  }
  if (strcmp(a, "help") == 0) {
    if (argc == 2) {
      fputs(usage, stdout);
      return finish(ST_CLI_OK);
    }
    verb_fn v = find_verb(argv[2]);
    if (!v) {
      fprintf(stderr, "safetensors: unknown command '%s'\n\n%s", argv[2],
              usage);
      return ST_CLI_ERROR;
    }
    char help[] = "--help";
    char *sub[] = {argv[2], help, NULL};
    return finish(v(2, sub));
  }
  verb_fn v = find_verb(a);
  if (!v) {
    if (a[0] == '-')
      fprintf(stderr, "safetensors: unknown option '%s'\n\n%s", a, usage);
    else
      fprintf(stderr, "safetensors: unknown command '%s'\n\n%s", a, usage);
    return ST_CLI_ERROR;
  }
  return finish(v(argc - 1, argv + 1));
}
