#include "optimizer.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "common.h"

namespace pmemps {

namespace {

[[noreturn]] void bad(const std::string& m) { throw Error(Code::InvalidArgument, m); }

void need(bool ok, const char* opt, const char* what) {
  if (!ok) bad(std::string("optimizer ") + opt + ": " + what);
}

// Uniform in [0, 1) from the top 24 bits: exactly representable in float32.
inline double unit(uint64_t r) { return static_cast<double>(r >> 40) * (1.0 / 16777216.0); }

// The common optimizers' loops, vectorized: blocks of 8 that -O2 turns into
// SIMD (AVX2 where the CPU has it, chosen once at load by target_clones,
// SSE2 otherwise). Each element sees the same float32 operations in the
// same order as the scalar loop (sqrt and division are correctly rounded in
// SIMD too, and the build forbids FMA contraction), so results are bitwise
// those of torch's formulas, which test/parity.test.ts checks. __restrict:
// weights, state and gradient never overlap (a row's blocks are disjoint;
// the gradient is the caller's buffer).
#define PMEMPS_SIMD __attribute__((target_clones("avx2", "default")))

PMEMPS_SIMD void sgd_plain(float* __restrict w, const float* __restrict g, uint32_t dim, float lr) {
  uint32_t i = 0;
  for (; i + 8 <= dim; i += 8)
    for (uint32_t j = i; j < i + 8; j++) w[j] = w[j] + (-lr) * g[j];
  for (; i < dim; i++) w[i] = w[i] + (-lr) * g[i];
}

PMEMPS_SIMD void adagrad(float* __restrict w, float* __restrict sum, const float* __restrict g, uint32_t dim, float lr, float eps) {
  auto one = [&](uint32_t j) {
    sum[j] = sum[j] + g[j] * g[j];
    const float std = std::sqrt(sum[j]) + eps;
    w[j] = w[j] + (-lr) * (g[j] / std);
  };
  uint32_t i = 0;
  for (; i + 8 <= dim; i += 8)
    for (uint32_t j = i; j < i + 8; j++) one(j);
  for (; i < dim; i++) one(i);
}

PMEMPS_SIMD void adam(float* __restrict w, float* __restrict m, float* __restrict v, const float* __restrict g, uint32_t dim, float step_size,
                      float bc2_sqrt, float fb1, float fb2, float c1, float c2, float eps) {
  auto one = [&](uint32_t j) {
    m[j] = m[j] * fb1 + c1 * g[j];
    v[j] = v[j] * fb2 + c2 * (g[j] * g[j]);
    const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
    w[j] = w[j] + (-step_size) * (m[j] / denom);
  };
  uint32_t i = 0;
  for (; i + 8 <= dim; i += 8)
    for (uint32_t j = i; j < i + 8; j++) one(j);
  for (; i < dim; i++) one(i);
}

}  // namespace

// The arithmetic is float32: a value finite as a double but not as a float
// (1e39) would make every row it touches infinite.
inline bool finite_f32(double v) { return std::isfinite(v) && std::fabs(v) <= static_cast<double>(FLT_MAX); }

void validate_optimizer(const OptimizerSpec& s) {
  const double* h = s.h;
  for (int i = 0; i < kMaxHyper; i++)
    if (!finite_f32(h[i])) bad("optimizer hyperparameters must be finite float32 values (|x| <= 3.4e38)");
  switch (s.type) {
    case OptType::Sgd:
      need(h[0] > 0, "sgd", "lr must be > 0");
      need(h[1] >= 0 && h[1] < 1, "sgd", "momentum must be in [0, 1)");
      need(h[2] >= 0 && h[2] <= 1, "sgd", "dampening must be in [0, 1]");
      need(h[3] == 0 || h[3] == 1, "sgd", "nesterov must be a boolean");
      need(h[3] == 0 || (h[1] > 0 && h[2] == 0), "sgd", "nesterov needs momentum > 0 and dampening 0");
      need(h[4] >= 0, "sgd", "weightDecay must be >= 0");
      break;
    case OptType::Adagrad:
      need(h[0] > 0, "adagrad", "lr must be > 0");
      need(h[1] >= 0, "adagrad", "initialAccumulator must be >= 0");
      need(h[2] > 0, "adagrad", "eps must be > 0");
      break;
    case OptType::Adam:
      need(h[0] > 0, "adam", "lr must be > 0");
      need(h[1] >= 0 && h[1] < 1, "adam", "beta1 must be in [0, 1)");
      need(h[2] >= 0 && h[2] < 1, "adam", "beta2 must be in [0, 1)");
      need(h[3] > 0, "adam", "eps must be > 0");
      break;
    case OptType::Rmsprop:
      need(h[0] > 0, "rmsprop", "lr must be > 0");
      need(h[1] >= 0 && h[1] < 1, "rmsprop", "alpha must be in [0, 1)");
      need(h[2] > 0, "rmsprop", "eps must be > 0");
      need(h[3] >= 0 && h[3] < 1, "rmsprop", "momentum must be in [0, 1)");
      need(h[4] == 0 || h[4] == 1, "rmsprop", "centered must be a boolean");
      break;
    case OptType::Ftrl:
      need(h[0] > 0, "ftrl", "lr must be > 0");
      need(h[1] <= 0, "ftrl", "lrPower must be <= 0");
      need(h[2] > 0, "ftrl", "initialAccumulator must be > 0");
      need(h[3] >= 0 && h[4] >= 0 && h[5] >= 0, "ftrl", "l1, l2 and l2Shrinkage must be >= 0");
      break;
    default:
      bad("unknown optimizer");
  }
}

void validate_init(const InitSpec& init) {
  const double* p = init.p;
  for (int i = 0; i < 4; i++)
    if (!finite_f32(p[i])) bad("initializer parameters must be finite float32 values (|x| <= 3.4e38)");
  switch (init.type) {
    case InitType::Zeros:
    case InitType::Constant:
      break;
    case InitType::Uniform:
      if (!(p[0] <= p[1])) bad("uniform initializer needs min <= max");
      break;
    case InitType::Normal:
      // The draw is at most sqrt(-2 ln 2^-24) < 6 standard deviations away.
      if (!(p[1] >= 0)) bad("normal initializer needs std >= 0");
      if (!finite_f32(std::fabs(p[0]) + 6 * p[1])) bad("normal initializer: |mean| + 6 std must stay a finite float32");
      break;
    default:
      bad("unknown initializer");
  }
}

int state_blocks(const OptimizerSpec& s) {
  switch (s.type) {
    case OptType::Sgd:
      return s.h[1] != 0 ? 1 : 0;
    case OptType::Adagrad:
      return 1;
    case OptType::Adam:
      return 2;
    case OptType::Rmsprop:
      return 1 + (s.h[3] != 0 ? 1 : 0) + (s.h[4] != 0 ? 1 : 0);
    case OptType::Ftrl:
      return 2;
  }
  return 0;
}

bool same_layout(const OptimizerSpec& a, const OptimizerSpec& b) {
  if (a.type != b.type) return false;
  if (state_blocks(a) != state_blocks(b)) return false;
  // RMSprop's blocks mean different things with and without centering.
  if (a.type == OptType::Rmsprop && ((a.h[3] != 0) != (b.h[3] != 0) || a.h[4] != b.h[4])) return false;
  return true;
}

void init_row(const InitSpec& init, const OptimizerSpec& opt, uint64_t key, uint32_t dim, float* row) {
  const uint64_t base = mix64(mix64(init.seed ^ 0x706d656d7073ULL) ^ key);
  auto rnd = [&](uint64_t ctr) { return mix64(base + ctr * 0x9e3779b97f4a7c15ULL); };
  switch (init.type) {
    case InitType::Zeros:
      for (uint32_t i = 0; i < dim; i++) row[i] = 0.0f;
      break;
    case InitType::Constant:
      for (uint32_t i = 0; i < dim; i++) row[i] = static_cast<float>(init.p[0]);
      break;
    case InitType::Uniform:
      for (uint32_t i = 0; i < dim; i++) row[i] = static_cast<float>(init.p[0] + (init.p[1] - init.p[0]) * unit(rnd(i)));
      break;
    case InitType::Normal: {
      const bool truncated = init.p[2] != 0;
      for (uint32_t i = 0; i < dim; i++) {
        double z = 0;
        // Truncated normal redraws past two standard deviations, like
        // tf.truncated_normal; each redraw uses fresh counters, so it stays a
        // pure function of (seed, key, i).
        for (uint64_t attempt = 0;; attempt++) {
          const uint64_t c = 2 * (static_cast<uint64_t>(i) + attempt * dim);
          const double u1 = 1.0 - unit(rnd(c));  // (0, 1]
          const double u2 = unit(rnd(c + 1));
          z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
          if (!truncated || std::fabs(z) <= 2.0 || attempt >= 64) break;
        }
        row[i] = static_cast<float>(init.p[0] + init.p[1] * z);
      }
      break;
    }
  }
  float* st = row + dim;
  const int blocks = state_blocks(opt);
  for (uint32_t i = 0; i < dim * static_cast<uint32_t>(blocks); i++) st[i] = 0.0f;
  if (opt.type == OptType::Adagrad) {
    for (uint32_t i = 0; i < dim; i++) st[i] = static_cast<float>(opt.h[1]);
  } else if (opt.type == OptType::Ftrl) {
    for (uint32_t i = 0; i < dim; i++) st[i] = static_cast<float>(opt.h[2]);  // accumulator; linear stays 0
  }
}

void apply_update(const OptimizerSpec& s, uint32_t dim, float* w, uint32_t* step, const float* g) {
  const double* h = s.h;
  float* st = w + dim;
  const uint32_t prev_steps = *step;
  *step = prev_steps + 1;
  switch (s.type) {
    case OptType::Sgd: {
      const float lr = static_cast<float>(h[0]), mom = static_cast<float>(h[1]);
      const float damp1 = static_cast<float>(1.0 - h[2]), wd = static_cast<float>(h[4]);
      const bool nesterov = h[3] != 0;
      if (mom == 0 && wd == 0) {
        sgd_plain(w, g, dim, lr);
        break;
      }
      for (uint32_t i = 0; i < dim; i++) {
        float d = g[i];
        if (wd != 0) d = d + wd * w[i];
        if (mom != 0) {
          float& buf = st[i];
          buf = prev_steps == 0 ? d : buf * mom + damp1 * d;
          d = nesterov ? d + mom * buf : buf;
        }
        w[i] = w[i] + (-lr) * d;
      }
      break;
    }
    case OptType::Adagrad:
      adagrad(w, st, g, dim, static_cast<float>(h[0]), static_cast<float>(h[2]));
      break;
    case OptType::Adam: {
      const double b1 = h[1], b2 = h[2];
      const double bc1 = 1.0 - std::pow(b1, static_cast<double>(*step));
      const double bc2 = 1.0 - std::pow(b2, static_cast<double>(*step));
      const float step_size = static_cast<float>(h[0] / bc1);
      const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      const float fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2);
      const float c1 = static_cast<float>(1.0 - b1), c2 = static_cast<float>(1.0 - b2);
      const float eps = static_cast<float>(h[3]);
      adam(w, st, st + dim, g, dim, step_size, bc2_sqrt, fb1, fb2, c1, c2, eps);
      break;
    }
    case OptType::Rmsprop: {
      const float lr = static_cast<float>(h[0]), alpha = static_cast<float>(h[1]);
      const float c = static_cast<float>(1.0 - h[1]), eps = static_cast<float>(h[2]);
      const float mom = static_cast<float>(h[3]);
      const bool centered = h[4] != 0;
      float* sq = st;
      float* buf = mom != 0 ? st + dim : nullptr;
      float* gavg = centered ? st + dim * (mom != 0 ? 2 : 1) : nullptr;
      for (uint32_t i = 0; i < dim; i++) {
        sq[i] = sq[i] * alpha + c * (g[i] * g[i]);
        float avg;
        if (centered) {
          gavg[i] = gavg[i] * alpha + c * g[i];
          avg = std::sqrt(sq[i] + (-1.0f) * (gavg[i] * gavg[i])) + eps;
        } else {
          avg = std::sqrt(sq[i]) + eps;
        }
        if (buf) {
          buf[i] = buf[i] * mom + g[i] / avg;
          w[i] = w[i] + (-lr) * buf[i];
        } else {
          w[i] = w[i] + (-lr) * (g[i] / avg);
        }
      }
      break;
    }
    case OptType::Ftrl: {
      // TensorFlow ApplyFtrlV2 (training_ops.cc), in float32.
      const float lr = static_cast<float>(h[0]), p = static_cast<float>(h[1]);
      const float l1 = static_cast<float>(h[3]), l2 = static_cast<float>(h[4]), shr = static_cast<float>(h[5]);
      const bool half = h[1] == -0.5;
      float* accum = st;
      float* linear = st + dim;
      for (uint32_t i = 0; i < dim; i++) {
        const float gs = g[i] + 2.0f * shr * w[i];
        const float na = accum[i] + g[i] * g[i];
        const float pn = half ? std::sqrt(na) : std::pow(na, -p);
        const float po = half ? std::sqrt(accum[i]) : std::pow(accum[i], -p);
        linear[i] += gs - (pn - po) / lr * w[i];
        const float quad = pn / lr + 2.0f * l2;
        const float lin = linear[i];
        const float sign = lin > 0 ? 1.0f : (lin < 0 ? -1.0f : 0.0f);
        w[i] = std::fabs(lin) > l1 ? (l1 * sign - lin) / quad : 0.0f;
        accum[i] = na;
      }
      break;
    }
  }
}

}  // namespace pmemps
