// Zero-initialised floats on a 64-byte boundary: whole-cache-line vector loads.
#pragma once
#include <cstdint>
#include <vector>

namespace drfast {

class AlignedFloats {
 public:
  explicit AlignedFloats(int64_t n) : storage_(static_cast<size_t>(n) + 16, 0.0f) {
    const auto addr = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = storage_.data() + ((64 - addr % 64) % 64) / sizeof(float);
  }
  float* data() { return data_; }

 private:
  std::vector<float> storage_;
  float* data_;
};

}  // namespace drfast
