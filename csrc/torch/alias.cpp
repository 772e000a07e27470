// Tensors that share memory, as docs/RECORD.md specifies: exact aliases and
// overlapping byte spans within one storage.
#include "alias.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

namespace safetensors::detail {
namespace {

// (device type, device index, storage address).
using StorageKey = std::tuple<int, int, const void *>;

// Tensors with no bytes (empty, meta, undefined, not strided) share nothing.
bool storage_key(const at::Tensor &t, StorageKey *key) {
  if (!t.defined() || t.layout() != c10::kStrided || !t.has_storage() || t.is_meta() ||
      t.numel() == 0)
    return false;
  const void *p = t.storage().data();
  if (!p) return false;
  *key = {static_cast<int>(t.device().type()), t.device().index(), p};
  return true;
}

// [first byte, one past the last byte] of t's elements in its storage.
std::pair<int64_t, int64_t> span(const at::Tensor &t) {
  int64_t es = static_cast<int64_t>(t.element_size());
  int64_t lo = 0, hi = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach >= 0 ? hi : lo) += reach;
  }
  int64_t start = t.storage_offset() * es;
  return {start + lo * es, start + (hi + 1) * es};
}

// The groups (two or more, in order) of tensors that live in one storage.
std::vector<std::vector<size_t>> by_storage(const std::vector<at::Tensor> &ts) {
  std::map<StorageKey, std::vector<size_t>> groups;
  std::vector<StorageKey> order;
  for (size_t i = 0; i < ts.size(); ++i) {
    StorageKey key;
    if (!storage_key(ts[i], &key)) continue;
    auto &g = groups[key];
    if (g.empty()) order.push_back(key);
    g.push_back(i);
  }
  std::vector<std::vector<size_t>> out;
  for (const auto &key : order)
    if (groups[key].size() > 1) out.push_back(groups[key]);
  return out;
}

// The sets (of two or more) of tensors whose bytes overlap, transitively,
// within one storage; sorted.
std::vector<std::vector<size_t>> overlap_groups(const std::vector<at::Tensor> &ts) {
  std::vector<std::vector<size_t>> out;
  for (const auto &idxs : by_storage(ts)) {
    std::vector<std::tuple<int64_t, int64_t, size_t>> spans;
    for (size_t i : idxs) {
      auto [start, stop] = span(ts[i]);
      spans.emplace_back(start, stop, i);
    }
    std::sort(spans.begin(), spans.end());
    std::vector<size_t> current;
    int64_t reach = -1;
    auto flush = [&] {
      if (current.size() > 1) {
        std::sort(current.begin(), current.end());
        out.push_back(current);
      }
    };
    for (const auto &[start, stop, i] : spans) {
      if (!current.empty() && start < reach) {
        current.push_back(i);
        reach = std::max(reach, stop);
      } else {
        flush();
        current = {i};
        reach = stop;
      }
    }
    flush();
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool same_view(const at::Tensor &a, const at::Tensor &b) {
  return a.scalar_type() == b.scalar_type() && a.sizes().equals(b.sizes()) &&
         a.strides().equals(b.strides()) && a.storage_offset() == b.storage_offset();
}

}  // namespace

std::vector<size_t> resolve_aliasing(const TensorDict &tensors, Aliasing policy) {
  std::vector<at::Tensor> ts;
  std::vector<std::string> names;
  for (const auto &[name, t] : tensors) {
    names.push_back(name);
    ts.push_back(t);
  }
  std::vector<size_t> owner(ts.size());
  for (size_t i = 0; i < owner.size(); ++i) owner[i] = i;
  if (policy == Aliasing::copy) return owner;
  if (policy == Aliasing::error) {
    auto groups = overlap_groups(ts);
    if (groups.empty()) return owner;
    std::set<std::string> first;
    std::string listed;
    for (const auto &g : groups) {
      std::set<std::string> group;
      for (size_t i : g) group.insert(names[i]);
      if (first.empty()) first = group;
      listed += listed.empty() ? "{" : ", {";
      for (const auto &n : group) listed += (n == *group.begin() ? "'" : ", '") + n + "'";
      listed += "}";
    }
    throw Error(ST_ERR_INVALID_ARGUMENT,
                "some tensors share memory: " + listed +
                    " (SaveOptions::aliasing = tie stores exact aliases once, copy stores "
                    "each name)",
                ST_NO_OFFSET, *first.begin());
  }
  for (const auto &idxs : by_storage(ts)) {
    std::vector<size_t> reps;
    for (size_t i : idxs) {
      auto r = std::find_if(reps.begin(), reps.end(),
                            [&](size_t rep) { return same_view(ts[i], ts[rep]); });
      if (r != reps.end()) owner[i] = *r;
      else reps.push_back(i);
    }
  }
  return owner;
}

}  // namespace safetensors::detail
