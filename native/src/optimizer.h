// Optimizers and initializers, applied per row inside the engine.
//
// A row is `dim` weights followed by the optimizer's state blocks of `dim`
// floats each, plus a per-row step count kept in the row header. The formulas
// follow torch.optim (SGD, Adagrad, Adam, RMSprop) and TensorFlow's
// ApplyFtrlV2 (FTRL); docs/optimizers.md writes each out. All arithmetic is
// float32 with scalar coefficients computed in double, as torch does.
//
// Initial rows are a pure function of (seed, key): every server, restart and
// replay produces the same row, so a pull of an absent key stores nothing.
#pragma once
#include <cstdint>
#include <cstring>

namespace pmemps {

enum class OptType : uint32_t { Sgd = 0, Adagrad = 1, Adam = 2, Rmsprop = 3, Ftrl = 4 };
enum class InitType : uint32_t { Zeros = 0, Constant = 1, Uniform = 2, Normal = 3 };

constexpr int kMaxHyper = 8;

struct OptimizerSpec {
  OptType type;
  double h[kMaxHyper];  // order: see OPTIMIZER_PARAMS in native/engine.ts
};

struct InitSpec {
  InitType type;
  double p[4];
  uint64_t seed;
};

// Throws Error(InvalidArgument) with a message naming the bad hyperparameter.
void validate_optimizer(const OptimizerSpec& s);
// Throws Error(InvalidArgument) unless every row the initializer makes is finite in float32.
void validate_init(const InitSpec& init);
// True when all n floats are finite (a pull must never return NaN or inf).
// Inline, and over blocks of 8 with an integer test of the exponent bits
// (all ones: inf or NaN), so that -O2 vectorizes it: it runs on every row of
// every push.
inline bool row_finite(const float* row, uint32_t n) {
  uint32_t bad = 0;
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint32_t b[8];
    std::memcpy(b, row + i, sizeof b);
    for (int j = 0; j < 8; j++) bad |= (b[j] & 0x7f800000u) == 0x7f800000u;
  }
  for (; i < n; i++) {
    uint32_t b;
    std::memcpy(&b, row + i, sizeof b);
    bad |= (b & 0x7f800000u) == 0x7f800000u;
  }
  return bad == 0;
}
// Number of state blocks (each `dim` floats) the optimizer keeps per row.
int state_blocks(const OptimizerSpec& s);
// True when `b` can replace `a` on a live table without changing the row layout.
bool same_layout(const OptimizerSpec& a, const OptimizerSpec& b);

// Fills weights from the initializer and the state with its initial values.
void init_row(const InitSpec& init, const OptimizerSpec& opt, uint64_t key, uint32_t dim, float* row);

// Applies one update with gradient g (already summed over duplicate keys).
void apply_update(const OptimizerSpec& s, uint32_t dim, float* row, uint32_t* step, const float* g);

}  // namespace pmemps
