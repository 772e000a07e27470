#!/usr/bin/env bash
# The dependency rule of ARCHITECTURE.md: cli/python/torch -> io -> core ->
# common. csrc/core and csrc/common make no system calls: they include no
# I/O-layer header and no system header, and (given a build directory) their
# object files reference no system call. csrc/common includes nothing from
# core or io.
#   usage: check-layers.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
say() { echo "check-layers: $*" >&2; bad=1; }

sys_headers='sys/[a-z_/]+\.h|unistd\.h|fcntl\.h|dirent\.h|pthread\.h|signal\.h|stdio\.h|time\.h|poll\.h|dlfcn\.h|linux/[a-z_/]+\.h'
while IFS= read -r hit; do
  say "a system header in a layer without system calls: $hit"
done < <(grep -nE "^[[:space:]]*#[[:space:]]*include[[:space:]]*<($sys_headers)>" csrc/core csrc/common -r || true)
while IFS= read -r hit; do
  say "core includes the I/O layer: $hit"
done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"(\.\./)?io/' -r csrc/core || true)
while IFS= read -r hit; do
  say "common includes core or io: $hit"
done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"(\.\./)?(core|io)/' -r csrc/common || true)

# System calls (and the libc wrappers that only make one) that core and
# common objects must never reference.
syscalls='open open64 openat openat64 creat close read pread pread64 readv preadv preadv2
write pwrite pwrite64 writev pwritev pwritev2 lseek lseek64 mmap mmap64 munmap mremap
madvise posix_madvise mprotect msync fsync fdatasync sync_file_range fstat fstat64 stat
stat64 lstat fstatat statx ftruncate fallocate posix_fallocate unlink unlinkat rename
renameat renameat2 link linkat symlink mkdir rmdir opendir fdopendir readdir readdir64
closedir getpid gethostname getrandom clock_gettime gettimeofday sysconf pthread_create
pthread_join syscall ioctl fcntl dup dup2 dup3 fopen fdopen fread fwrite fclose printf
fprintf puts perror abort exit _exit kill raise signal sigaction'
if [ $# -ge 1 ]; then
  build=$1
  objs=$(find "$build" -path '*st_objects.dir/csrc/core/*.o' -o -path '*st_common_objects.dir/csrc/common/*.o' | sort)
  [ -n "$objs" ] || { echo "check-layers: no core or common objects under $build" >&2; exit 1; }
  pattern="^($(echo $syscalls | tr ' ' '|'))(@.*)?$"
  for o in $objs; do
    refs=$(nm -u "$o" | awk '{print $NF}' | grep -E "$pattern" || true)
    [ -z "$refs" ] || say "$o calls the system: $(echo $refs)"
  done
  nobj=$(echo "$objs" | wc -l)
fi
[ $bad -eq 0 ] || exit 1
echo "check-layers: core and common include no I/O or system header${nobj:+; $nobj objects reference no system call}"
